#!/usr/bin/env bash
# The one place that knows how to submit a songrec job.
#
#   ./spark-submit.sh [--master URL] [--conf-file conf/X.yaml] [--set key=value ...] [--pack] JOB [JOB ARGS...] [-- SPARK-SUBMIT OPTIONS...]
#
# Builds build/songrec.zip from lib/songrec for --py-files, turns the config's `spark:` section into
# submit options (master, memory, --conf), and runs the venv's spark-submit on jobs/JOB.py.
# --pack also ships the venv as build/env.tar.gz (venv-pack, `make pack`) for the executors' Python.
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
usage: $(basename "$0") [--master URL] [--conf-file conf/X.yaml] [--set key=value ...] [--pack] JOB [JOB ARGS...] [-- SPARK-SUBMIT OPTIONS...]

Runs jobs/JOB.py with spark-submit. Default master: the config's spark.master (local[*]).
  --master URL       spark://host:port, yarn, k8s://..., local[N]
  --conf-file FILE   YAML config (default: conf/local.yaml)
  --set key=value    override one config key (repeatable), e.g. --set root=/tmp/run1
  --pack             ship this venv to the executors as build/env.tar.gz (venv-pack; built by
                     'make pack' when missing or older than the venv) with --archives ...#environment,
                     and run their Python from ./environment/bin/python (cluster masters only; the
                     workers need the same base Python 3.11 at the same path). Our own code still
                     travels with --py-files build/songrec.zip.
  -h, --help         this text

Jobs:
$(jobs_list)

Examples:
  $(basename "$0") preprocess --set input=/data/spotify_dataset.csv --set root=/tmp/run1
  $(basename "$0") --master spark://master:7077 --conf-file conf/cluster.yaml --pack pipeline
USAGE
}

master=""
conf_file="$ROOT/conf/local.yaml"
sets=()
pack=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --master) [[ $# -ge 2 ]] || { echo "error: --master needs a URL" >&2; exit 2; }; master="$2"; shift 2 ;;
    --master=*) master="${1#--master=}"; shift ;;
    --conf-file) [[ $# -ge 2 ]] || { echo "error: --conf-file needs a file" >&2; exit 2; }; conf_file="$2"; shift 2 ;;
    --conf-file=*) conf_file="${1#--conf-file=}"; shift ;;
    --set) [[ $# -ge 2 ]] || { echo "error: --set needs key=value" >&2; exit 2; }; sets+=(--set "$2"); shift 2 ;;
    --set=*) sets+=(--set "${1#--set=}"); shift ;;
    --pack) pack=1; shift ;;
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

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"

# Native dependencies travel as the packed venv (Spark's Python packaging guide): rebuilt when
# missing or older than the venv's install stamp. In client mode the driver keeps this machine's Python.
pack_opts=()
if [[ "$pack" == 1 ]]; then
  archive="$ROOT/build/env.tar.gz"
  pack_opts=(--pack "$archive")
  cluster_deploy=0
  for ((i = 0; i < ${#extra[@]}; i++)); do
    if [[ "${extra[$i]}" == "--deploy-mode=cluster" || ( "${extra[$i]}" == "--deploy-mode" && "${extra[$((i + 1))]:-}" == "cluster" ) ]]; then
      cluster_deploy=1
    fi
  done
  if [[ "$cluster_deploy" == 0 ]]; then pack_opts+=(--driver-python "$PYSPARK_DRIVER_PYTHON"); fi
fi

# Submit options from the config's spark: section, NUL-separated so that no value meets a shell.
submit_opts=()
while IFS= read -r -d '' opt; do submit_opts+=("$opt"); done < <(
  PYTHONPATH="$ROOT/lib" "$PY" -m songrec.submit --conf-file "$conf_file" ${master:+--master "$master"} "${sets[@]}" \
    "${pack_opts[@]}"
)
[[ ${#submit_opts[@]} -gt 0 ]] || exit 2  # songrec.submit printed the config error

# The archive is built after the options are known good (a config error never waits for a pack).
if [[ "$pack" == 1 && ( ! -f "$archive" || ( -f "$VENV/.installed" && "$VENV/.installed" -nt "$archive" ) ) ]]; then
  echo "packing $VENV into $archive (venv-pack, about a minute) ..." >&2
  PYTHONPATH="$ROOT/lib" "$PY" -m songrec.pack --prefix "$VENV" --output "$archive" >&2
fi
effective_master="${master}"
for ((i = 0; i < ${#submit_opts[@]}; i++)); do
  [[ "${submit_opts[$i]}" == "--master" ]] && effective_master="${submit_opts[$((i + 1))]}"
done
if [[ "$effective_master" == local* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
  cluster_opts=()
else
  # TorchDistributor's ranks are torchrun children of a barrier task: they get the Python worker's
  # environment but not the sys.path entries where Spark puts --py-files, so without this they
  # cannot unpickle songrec.train_worker.train_rank. Relative: the zip lies in the executor's
  # working directory, where the ranks start (standalone, YARN).
  cluster_opts=(--conf "spark.executorEnv.PYTHONPATH=songrec.zip")
fi

exec "$VENV/bin/spark-submit" \
  "${submit_opts[@]}" \
  "${cluster_opts[@]}" \
  --py-files "$ROOT/build/songrec.zip" \
  --driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties" \
  "${extra[@]}" \
  "$ROOT/jobs/$job.py" --conf-file "$conf_file" "${sets[@]}" "${job_args[@]}"
