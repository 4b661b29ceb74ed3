# Two commands for a fresh clone: `make demo` (the main job) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/runner: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Python writes no bytecode cache where PYTHONDONTWRITEBYTECODE is set (many container images,
# and these machines): compiled here, a start of the runner or of a helper process imports
# the project's modules without compiling them (0.36 s against 0.43 for all of them).
install: $(BIN)/runner
	-@$(BIN)/python -m compileall -q runner plugins

# The embedded broker, synthetic clicks (a few bad ones) and the fault-tolerant pipeline.
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# Two workers, each with a broker of its own: the suite waits on brokers and child processes
# more than it computes, so two halves run side by side in a little over half the time.
test: install
	$(BIN)/python -m pytest -q -n 2

bench: install
	$(BIN)/runner bench pipelines/basic.yaml pipelines/fault_tolerant.yaml

clean:
	rm -rf $(VENV) state_store output .pytest_cache
	find runner plugins tests -name __pycache__ -prune -exec rm -rf {} +
