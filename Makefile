# Two entry points: `make demo` and `make test`. Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare torch requirement would fetch a multi-GB CUDA build (see README, "Install by hand").
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,latent]"
	$(VENV)/bin/l2c fetch-mnist
	touch $(STAMP)

.PHONY: setup demo test
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/l2c demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
