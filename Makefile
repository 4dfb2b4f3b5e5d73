# drone_pose developer commands. `make demo` and `make test` set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
SETUP_INPUTS := $(wildcard requirements/*.txt) tools/setup_env.sh setup.py setup.cfg package.xml \
	$(wildcard interfaces/tf2_msgs/*.txt interfaces/tf2_msgs/*.xml interfaces/tf2_msgs/msg/*)
PYTEST_ARGS ?=

.PHONY: setup test lint format demo clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup
	$(VENV)/bin/drone-pose demo

clean:
	rm -rf $(VENV) build install log .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
