# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) beam_runner.py make-sample --output demo/raw
	$(PY) beam_runner.py stage1 --input laion-en=demo/raw --output demo/stage1
	$(PY) beam_runner.py inspect demo/stage1/rejected --rows 0 --render demo/rejected.html --limit 300
	@echo "funnel chart: demo/stage1/funnel.png; rejected pairs to look at: demo/rejected.html"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf demo .pytest_cache
