# Two commands for a new user:  `make run` (the app) and `make test` (the tests).
# Both set up .venv first; setup is skipped while requirements.txt is unchanged.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.req-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: setup run test bench
setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.req-*; touch $@

run: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/restore.py
	$(PY) bench/rewards.py
