# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv if missing and installs the project (idempotent: reinstalls only
# when pyproject.toml changes). torch is pinned to 2.13.0 (CPU wheel); use pip, not uv.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean test-tools

install: $(STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing diffrecon and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -e '.[test]' > $(VENV)/install.log 2>&1 \
		|| (tail -n 40 $(VENV)/install.log; exit 1)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/diffrecon demo --out demo_output

lint: $(STAMP)
	$(BIN)/ruff check diffrecon tests benchmarks

# Debian tools the tests use (Orthanc, dicom3tools), installed when missing
test-tools:
	@bash scripts/install_test_tools.sh

test: $(STAMP) lint test-tools
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
