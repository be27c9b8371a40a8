# The README's commands. Each target sets up what it needs first (scripts/bootstrap.sh).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test synth bench clean help constraints

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

demo:  ## run the connected platform locally (sensors -> gateways -> cloud -> lake -> models), through faults, and reconcile
	@scripts/bootstrap.sh demo
	$(BIN)/iiot demo

test:  ## lint, type-check and run the whole test suite (what CI runs)
	@scripts/bootstrap.sh test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

synth:  ## synthesize every stack of dev, staging and prod into cdk.out (CDK CLI 2.x, cdk-nag)
	@scripts/bootstrap.sh synth
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_DISABLE_CLI_TELEMETRY=true \
	  node_modules/.bin/cdk synth --quiet --no-notices

bench:  ## run every benchmark in bench/ and print its figures
	@scripts/bootstrap.sh bench
	@set -e; for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script; done

clean:  ## remove generated files (keeps .venv)
	rm -rf .demo cdk.out .pytest_cache .mypy_cache .ruff_cache

constraints:  ## re-pin every dependency (after changing pyproject.toml)
	$(BIN)/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
	  --no-emit-package iiot-platform -o constraints.txt
