# dtrain-magics: every target sets up what it needs first (scripts/setup.sh is idempotent).
#   make lab    open JupyterLab on notebooks/ (the main job)
#   make demo   run the quickstart notebook headless and print its result
#   make test   lint, then the whole test suite against a real MPI + Horovod cluster
#   make bench  the benchmarks against the peers (installs the bench extra); BENCH_ARGS="--quick"
# TORCH_SPEC=torch==2.11.0 make ...   pins another torch (e.g. the CUDA build on GPU nodes)

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
# JupyterLab refuses to run as root unless told (containers and CI machines often are root)
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup browser test lint unit lab demo bench clean

setup:
	@scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm lint

browser:
	@scripts/setup-browser.sh

test: lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --notebook-dir=notebooks $(LAB_ARGS)

demo: setup
	$(PY) scripts/run_notebook.py notebooks/01-quickstart.ipynb

# the peers (nbdistributed, accelerate) come from the package index, once: the bench extra
bench: setup
	@$(PY) -c "import nbdistributed, accelerate" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
