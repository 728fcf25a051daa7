# corgigan: `make demo` runs the whole pipeline offline on synthetic data; `make test` runs the tests.
# The virtual environment is (re)built from requirements.txt when missing or out of date.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Offline, quiet, reproducible library behaviour for every command below.
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: venv demo test lint bench rehearsal gpu-check mutation clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	dvc repro
	dvc metrics show

test: $(STAMP)
	ruff check src tests benchmarks tools
	pytest

lint: $(STAMP)
	ruff check src tests benchmarks tools

bench: $(STAMP)
	python -m benchmarks.run $(BENCH)

# The full configuration rehearsed on this machine (benchmarks/rehearsal.py): every stage at 1024 px with
# offline stand-ins and small counts; per-stage time, peak memory and output size per image in
# out/rehearsal/rehearsal.{txt,json}, and the measured figures of src/corgigan/costs.json (what
# `corgigan check` and README's cost table use) rewritten. ~27 min on 2 busy cores, 13 GiB at most; not in
# `make test` (tests/test_rehearsal.py runs it at 64 px).
rehearsal: $(STAMP)
	python -m benchmarks.rehearsal --out out/rehearsal --costs src/corgigan/costs.json

# The prepared check for a GPU machine (benchmarks/gpu_check.py): needs only python3 with torch, numpy and
# Pillow, so it does not depend on the venv (it uses one when present). Without a GPU: toy sizes on the CPU.
OUT ?= reports/gpu-check
gpu-check:
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py --out $(OUT)

# Mutation testing of the core modules ([tool.mutmut] in pyproject.toml): prints the score and each
# surviving mutant. Slow (see README), so not part of `make test`; one core unless MUTATION_JOBS=N;
# MUTATION_FRESH=1 forgets mutmut's cached results (needed after adding tests to an already selected file).
# A subset, e.g. the filter's rules:
#   make mutation MUTATE=src/corgigan/data/filter_rules.py MUTATION_TESTS="tests/test_filter.py tests/test_filter_edges.py"
mutation: $(STAMP)
	python tools/mutation.py $(if $(MUTATE),--only $(MUTATE)) $(if $(MUTATION_TESTS),--tests $(MUTATION_TESTS)) \
		$(if $(MUTATION_JOBS),--max-children $(MUTATION_JOBS)) $(if $(MUTATION_FRESH),--fresh) \
		$(if $(MUTATION_IN_PROCESS),--in-process)

clean-venv:
	rm -rf $(VENV)
