#!/usr/bin/env bash
# The one place that knows how to submit a songrec job.
#
#   ./spark-submit.sh [--master URL] [--conf-file conf/X.yaml] [--set key=value ...] JOB [JOB ARGS...] [-- SPARK-SUBMIT OPTIONS...]
#
# Builds build/songrec.zip from lib/songrec for --py-files, turns the config's `spark:` section into
# submit options (master, memory, --conf), and runs the venv's spark-submit on jobs/JOB.py.
# Works from any directory; every argument is passed on quoted, never through a shell.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SONGREC_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

jobs_list() {
  local f
  for f in "$ROOT"/jobs/*.py; do
    f="$(basename "$f" .py)"
    [[ "$f" == _* ]] || printf '  %s\n' "$f"
  done
}

usage() {
  cat <<USAGE
usage: $(basename "$0") [--master URL] [--conf-file conf/X.yaml] [--set key=value ...] JOB [JOB ARGS...] [-- SPARK-SUBMIT OPTIONS...]

Runs jobs/JOB.py with spark-submit. Default master: the config's spark.master (local[*]).
  --master URL       spark://host:port, yarn, k8s://..., local[N]
  --conf-file FILE   YAML config (default: conf/local.yaml)
  --set key=value    override one config key (repeatable), e.g. --set root=/tmp/run1
  -h, --help         this text

Jobs:
$(jobs_list)

Example:
  $(basename "$0") preprocess --set input=/data/spotify_dataset.csv --set root=/tmp/run1
USAGE
}

master=""
conf_file="$ROOT/conf/local.yaml"
sets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --master) [[ $# -ge 2 ]] || { echo "error: --master needs a URL" >&2; exit 2; }; master="$2"; shift 2 ;;
    --master=*) master="${1#--master=}"; shift ;;
    --conf-file) [[ $# -ge 2 ]] || { echo "error: --conf-file needs a file" >&2; exit 2; }; conf_file="$2"; shift 2 ;;
    --conf-file=*) conf_file="${1#--conf-file=}"; shift ;;
    --set) [[ $# -ge 2 ]] || { echo "error: --set needs key=value" >&2; exit 2; }; sets+=(--set "$2"); shift 2 ;;
    --set=*) sets+=(--set "${1#--set=}"); shift ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) break ;;
  esac
done

if [[ $# -lt 1 ]]; then
  echo "error: no JOB given" >&2; usage >&2; exit 2
fi
job="$1"; shift
if [[ ! "$job" =~ ^[a-z_]+$ || ! -f "$ROOT/jobs/$job.py" || "$job" == _* ]]; then
  echo "error: unknown job '$job'" >&2; usage >&2; exit 2
fi

job_args=()
extra=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; extra=("$@"); break; fi
  job_args+=("$1"); shift
done

if [[ ! -x "$PY" ]]; then
  echo "error: $VENV is missing; run 'make install' in $ROOT first" >&2; exit 1
fi
# A relative conf file is relative to where the user is, like every other path they type.
[[ "$conf_file" = /* ]] || conf_file="$PWD/$conf_file"

# Our own code travels to executors as a zip (--py-files); native dependencies do not (see README).
mkdir -p "$ROOT/build"
"$PY" - "$ROOT/lib" "$ROOT/build/songrec.zip" <<'PYZIP'
import pathlib, sys, zipfile
lib, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tmp = out.with_suffix(".zip.tmp")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for path in sorted((lib / "songrec").rglob("*.py")):
        zf.write(path, path.relative_to(lib).as_posix())
tmp.replace(out)
PYZIP

# Submit options from the config's spark: section, NUL-separated so that no value meets a shell.
submit_opts=()
while IFS= read -r -d '' opt; do submit_opts+=("$opt"); done < <(
  PYTHONPATH="$ROOT/lib" "$PY" -m songrec.submit --conf-file "$conf_file" ${master:+--master "$master"} "${sets[@]}"
)

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"
effective_master="${master}"
for ((i = 0; i < ${#submit_opts[@]}; i++)); do
  [[ "${submit_opts[$i]}" == "--master" ]] && effective_master="${submit_opts[$((i + 1))]}"
done
if [[ "$effective_master" == local* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

exec "$VENV/bin/spark-submit" \
  "${submit_opts[@]}" \
  --py-files "$ROOT/build/songrec.zip" \
  --driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties" \
  "${extra[@]}" \
  "$ROOT/jobs/$job.py" --conf-file "$conf_file" "${sets[@]}" "${job_args[@]}"
