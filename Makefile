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

# Test files that start in-process vLLM engines run in processes of their own: vLLM does not give
# an engine's memory (about 2 GB each) back when it is dropped, and together they outgrow 24 GB.
VLLM_TESTS = tests/test_export.py tests/test_policy_lag.py tests/test_training.py tests/test_vllm_engine.py

test: install
	$(VENV)/bin/python -m pytest -q -ra --durations=25 $(addprefix --ignore=,$(VLLM_TESTS))
	set -e; for f in $(VLLM_TESTS); do $(VENV)/bin/python -m pytest -q -ra $$f; done
