# songrec: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROWS ?=
CONF ?= conf/local.yaml
SET ?=
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: install check-system test lint run browser bench-preprocess bench-train bench-knn bench-knn-sweep test-slow test-cluster pack clean

install: $(STAMP)

check-system:
	@command -v java >/dev/null 2>&1 || { echo "ERROR: Java 17+ is required by Spark 4 but 'java' is not on PATH (Debian: apt-get install openjdk-17-jre-headless)"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then echo "ERROR: Java 17+ is required by Spark 4, found: $$(java -version 2>&1 | head -1)"; exit 1; fi
	@command -v g++ >/dev/null 2>&1 || { echo "ERROR: g++ is required to build hnswlib but is not on PATH (Debian: apt-get install g++)"; exit 1; }
	@command -v python3.11 >/dev/null 2>&1 || python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null || { echo "ERROR: Python 3.11 is required (python3.11 not found)"; exit 1; }

# hnswlib compiles with -march=native by default, and pip keeps that wheel in its cache for every later
# install: a venv (or its --pack archive) built on an AVX-512 host then dies of SIGILL on an AVX2-only
# one. So it is built here, never from the cache, for a portable target: x86-64-v3 (AVX2 + FMA) where
# the build host has them, baseline x86-64 where not, the compiler's default off x86.
# `make install HNSWLIB_MARCH=native` trades that for a knn stage ~0.89x as long on this CPU, whose scores
# then differ in the last bits from every other machine's (hnswlib's AVX-512 kernel sums wider lanes).
HNSWLIB_MARCH ?= $(shell [ "$$(uname -m)" = x86_64 ] && { grep -qsw avx2 /proc/cpuinfo && grep -qsw fma /proc/cpuinfo \
  && echo x86-64-v3 || echo x86-64; })
HNSWLIB_FLAGS := $(if $(HNSWLIB_MARCH),-march=$(HNSWLIB_MARCH))
HNSWLIB_PIN = $(shell grep '^hnswlib==' requirements.txt)

$(STAMP): requirements.txt setup.py | check-system
	@test -x $(PY) || { command -v python3.11 >/dev/null 2>&1 && python3.11 -m venv $(VENV) || python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	@echo "building $(HNSWLIB_PIN) for $(or $(HNSWLIB_MARCH),the compiler's default target) ..."
	HNSWLIB_NO_NATIVE=1 CFLAGS="$(HNSWLIB_FLAGS)" CXXFLAGS="$(HNSWLIB_FLAGS)" $(PY) -m pip install -q --no-cache-dir \
	  --force-reinstall --no-deps --no-binary hnswlib "$(HNSWLIB_PIN)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check --diff lib jobs tests bench

# The report test renders report/index.html in Debian's headless Chromium; installed here when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the report test ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "WARNING: could not install chromium; tests/test_report.py will skip its browser check"; }

test: install lint browser
	$(VENV)/bin/pytest -m "not slow and not cluster" -p no:cacheprovider --durations=15

test-slow: install
	$(VENV)/bin/pytest -m "slow"

# A real Spark standalone cluster on 127.0.0.1 (master + 2 workers, started and stopped by pid by
# tests/cluster.py): the whole pipeline submitted to it, compared with local mode; --pack shipping.
test-cluster: install
	$(VENV)/bin/pytest -m "cluster" -p no:cacheprovider --durations=10

# The venv as an archive for `spark-submit --archives build/env.tar.gz#environment` (spark-submit.sh
# --pack): torch, pyarrow and hnswlib reach executors that lack them. Rebuilt when the venv changes.
pack: build/env.tar.gz

build/env.tar.gz: $(STAMP)
	$(PY) -m songrec.pack --prefix $(VENV) --output $@

# The main job on the embedded default: generate a stand-in dataset (unless INPUT names a real
# spotify_dataset.csv), run every stage in one Spark application, then show what it produced.
# ROWS=551443 is the full-size stand-in; its run root is data/run-ROWS so runs of two sizes coexist.
# A sized run sees each song FULL_EPOCHS times at most: at 551k rows and 2 x 512 rows a step that is
# ~1,900 optimiser steps, more than 30 epochs of the 20k default, and keeps the full-size run within minutes.
FULL_EPOCHS ?= 4
RUN_ROOT := $(if $(INPUT),data/run-input,$(if $(ROWS),data/run-$(ROWS),data/run))
RAW := $(if $(ROWS),data/raw-$(ROWS)/spotify_dataset.csv,data/raw/spotify_dataset.csv)
run: install
ifeq ($(INPUT),)
	@if [ -f $(RAW) ]; then echo "using the generated $(RAW) (delete it to regenerate)"; else \
	  ./spark-submit.sh --conf-file $(CONF) --set input=$(RAW) $(if $(ROWS),--set generate.rows=$(ROWS)) $(SET) generate; fi
	./spark-submit.sh --conf-file $(CONF) --set input=$(RAW) --set root=$(RUN_ROOT) \
	  $(if $(ROWS),--set train.max_epochs=$(FULL_EPOCHS)) $(SET) pipeline
else
	./spark-submit.sh --conf-file $(CONF) --set input=$(INPUT) --set root=$(RUN_ROOT) $(SET) pipeline
endif
	$(VENV)/bin/songrec summary --run $(RUN_ROOT)

bench-preprocess: install
	$(PY) bench/preprocess.py $(if $(ROWS),--rows $(ROWS))

bench-train: install
	$(PY) bench/train.py

bench-knn: install
	$(PY) bench/knn.py

bench-knn-sweep: install
	$(PY) bench/knn_sweep.py

clean:
	rm -rf data/run data/test build dist lib/*.egg-info .pytest_cache .ruff_cache
