# Two commands set everything up on a fresh machine: `make test` and `make annotate MANIFEST=...`.
# Each creates .venv on first use from pyproject.toml pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

MANIFEST ?= manifests/example.parquet
MODEL ?=
OUT ?=
TASKS ?=
JOB ?=
WORKERS ?=
# Any other annotate option, e.g. ARGS='--dry-run' or ARGS='--max-wall 240 --quiet'.
ARGS ?=
TINY_MODEL_DIR ?= models/tiny-qwen2-audio
PYTEST_ARGS ?=

RUNTIME_STAMP := $(VENV)/.runtime-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: annotate test tiny-model bench bench-driver bench-shards bench-final example-manifest clean venv

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

venv: $(RUNTIME_STAMP)

annotate: $(RUNTIME_STAMP)
	$(PY) -m pipeline annotate $(MANIFEST) \
		$(if $(MODEL),--model $(MODEL)) $(if $(OUT),--out $(OUT)) \
		$(if $(TASKS),--tasks $(TASKS)) $(if $(JOB),--job $(JOB)) \
		$(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Writing random weights in the Hugging Face layout uses the reference implementation (torch).
tiny-model: $(TEST_STAMP)
	$(PY) -m pipeline tiny-model $(TINY_MODEL_DIR) --seed 0 --flavour instruct

# The realistic benchmark, side by side with the reference (a few minutes on 2 cores); figures are
# printed and saved to BENCH_OUT (default outputs/bench/bench.json).
BENCH_OUT ?= outputs/bench/bench.json
bench: $(TEST_STAMP)
	$(PY) -m pipeline bench --out $(BENCH_OUT)

# The driver's own time and peak memory for --dry-run, a first dispatch (--max-rows 32) and a resume,
# on manifests of ROWS rows over 100,000 real files (needs `make tiny-model`); figures to
# DRIVER_BENCH_OUT (default outputs/bench/driver.json).
ROWS ?= 1000000,2000000,10000000
DRIVER_BENCH_OUT ?= outputs/bench/driver.json
bench-driver: $(RUNTIME_STAMP)
	$(PY) -m pipeline bench driver --rows $(ROWS) --model $(TINY_MODEL_DIR) --out $(DRIVER_BENCH_OUT)

# The driver's and a decode task's peak memory on a generated Hub-layout Parquet shard of GB GB.
GB ?= 1
bench-shards: $(TEST_STAMP)
	$(PY) -m pipeline bench shards --gb $(GB) --model $(TINY_MODEL_DIR) --work-dir outputs/bench/shards \
		--out outputs/bench/shards.json

# The driver's cost of OUT at scale: resume state and the final tables over a million committed
# results (time, CPU and peak memory printed and saved to BENCH_FINAL_OUT).
BENCH_FINAL_OUT ?= outputs/bench/final_tables.json
BENCH_FINAL_ROWS ?= 1000000
bench-final: $(RUNTIME_STAMP)
	$(PY) -m pipeline.bench.final_tables --rows $(BENCH_FINAL_ROWS) --out $(BENCH_FINAL_OUT)

clean:
	rm -rf $(VENV) outputs models .pytest_cache
