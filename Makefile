# One entry point for the common jobs. `make test` creates .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch reads the authors' checkpoints in the importer tests.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-all install info clean-venv

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[all,test,torch]"
	touch $@

install: $(VENV)/.installed

# The quickstart: preprocess the real carphone clip, train a tiny model (<= 14 min), evaluate, export, report.
demo: install
	$(VENV)/bin/bilayer-jax demo --out demo_out

# The fast suite (tiny models; paper sizes only through shapes): what CI runs.
test: install
	$(PY) -m pytest -q -m "not slow"

# Everything, including paper-size checks (minutes on 2 cores).
test-all: install
	$(PY) -m pytest -q

info: install
	$(VENV)/bin/bilayer-jax info --config paper

clean-venv:
	rm -rf $(VENV)
