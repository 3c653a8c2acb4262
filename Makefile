# The two set-up commands of the README:
#   make quickstart   install, then train SmolLM2-135M with IBPO on the built-in arithmetic task
#   make test         install, then run the whole test suite
VENV ?= .venv
CONFIG ?= configs/quickstart.yaml
ARGS ?=

.PHONY: install quickstart test

install:
	bash scripts/install.sh

quickstart: install
	$(VENV)/bin/ibpo fit -c $(CONFIG) $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q -ra
