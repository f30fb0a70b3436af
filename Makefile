# The two commands: `make demo` (the main job on the embedded default) and `make test`.
# Each sets up .venv on a fresh machine (Python >= 3.10 and access to PyPI).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on our machines; override with e.g. TORCH_SPEC=torch for another build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,slicer,demo,ray

.PHONY: install test-tools lint demo test bench benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/memorization-index demo --out demo-output

# Tools the tests use beyond Python packages: headless Chromium for the report screenshots.
# Installed only where we are root with apt-get; elsewhere those tests skip and say why.
test-tools:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } \
		|| echo "note: chromium is not installed; the report screenshot tests will skip"

# The linter: rules and line length in pyproject.toml ([tool.ruff]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install test-tools lint
	$(PY) -m pytest Testing -q

bench: install
	$(PY) tools/bench_perf.py --out bench

# Both stages of the audit (global search + verification), seeds 0 and 1, one after the other (about 40 min each on 2 cores);
# BENCHMARK_ARGS=--no-verification measures the global stage alone, several times faster;
# BENCHMARK_SLICES=250 samples more slices per split (hours with both stages).
BENCHMARK_ARGS ?=
BENCHMARK_SLICES ?= 120
BENCHMARK_DATA = --dataset brain=../shared/data/brain/ds002748 \
	--dataset spine=../shared/data/spine/myosegmentum \
	--dataset knee=../shared/data/knee \
	--subject-pattern 'knee=(pykneer-s01|pymskt-s02)' \
	--slices-per-split $(BENCHMARK_SLICES)
benchmark: install
	$(VENV)/bin/memorization-index benchmark $(BENCHMARK_DATA) --seed 0 --out bench-quality $(BENCHMARK_ARGS)
	$(VENV)/bin/memorization-index benchmark $(BENCHMARK_DATA) --seed 1 --out bench-quality-seed1 $(BENCHMARK_ARGS)
	cp bench-quality/results.md docs/benchmarks.md
	printf '\n# Second seed (--seed 1: other subject split, sampling and edit parameters)\n\n' >> docs/benchmarks.md
	tail -n +2 bench-quality-seed1/results.md >> docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-output bench bench-quality bench-quality-seed1 .pytest_cache
