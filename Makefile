# Everything installs from this repository's files into .venv (Python >= 3.10 with venv).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow export clean-nbs bench readme

$(VENV)/.installed: settings.ini setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# search → pretrain → evaluate on the bundled digits data, on CPU, in a few minutes
demo: $(VENV)/.installed
	$(VENV)/bin/nasiam run nbs/experiments/quickstart.ipynb --out runs/quickstart

# Two tiers. `make test`: nasiam/ against nbs/, the notebooks' examples and every test not marked slow, within minutes.
# `make test-slow`: the notebooks with their `#| slow` cells, and the tests marked slow (real runs: CIFAR-10 photos, collapse, JupyterLab in a browser, sweeps, torchrun).
# CI (.ci/run) runs both. Both print their 15 slowest tests.
# `make test PYTEST_WORKERS=2` spreads pytest over pytest-xdist workers (tests/conftest.py gives each its share of the cores).
PYTEST_WORKERS ?=
PYTEST_ARGS := -q -ra --durations=15 $(if $(PYTEST_WORKERS),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder,)

test: $(VENV)/.installed
	$(VENV)/bin/nbdev_export
	@test -z "$$(git status --porcelain -- nasiam)" || { git status --short -- nasiam; echo "nasiam/ differs from what nbs/ exports: run nbdev_export and commit"; exit 1; }
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers 2   # two notebooks at a time, a thread each: two kernels on both cores thrash (4 min against 35 s)
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(VENV)/bin/nbdev_test --n_workers 2 --flags slow   # the notebooks again, their cells flagged slow included
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

export: $(VENV)/.installed
	$(VENV)/bin/nbdev_export

clean-nbs: $(VENV)/.installed
	$(VENV)/bin/nbdev_clean

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py

readme: $(VENV)/.installed
	$(VENV)/bin/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README

# The documentation site in _docs/, offline: every notebook a page, the API from the docments, the index from
# nbs/index.ipynb. With Quarto on PATH (or the registry's quarto-cli package, `pip install -e '.[docs]'`, where its
# build can fetch Quarto) nbdev_docs builds nbdev's own site; README.md is touched so that nbdev leaves it as it is.
# Without Quarto, docs/build.py builds it from the same nbdev doc processors, with nbconvert: no notebook cell runs.
.PHONY: docs
docs: $(VENV)/.installed
	@if PATH="$(abspath $(VENV))/bin:$$PATH" command -v quarto >/dev/null 2>&1; then \
	  echo "make docs: building _docs/ with nbdev_docs and Quarto ($$(PATH="$(abspath $(VENV))/bin:$$PATH" command -v quarto))"; \
	  touch README.md && PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/nbdev_docs; \
	else \
	  $(PY) docs/build.py; \
	fi
