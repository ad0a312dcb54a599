# Two commands from a fresh clone: `make demo` (the whole loop on the bundled data, CPU)
# and `make test`. Both create .venv and install everything themselves.
PYTHON ?= python3
VENV ?= .venv
# The CPU build is installed first so no CUDA build is pulled; GPU users override:
#   make TORCH_SPEC='torch==2.5.1' ...
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install test demo bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# DeepSpeed builds no ops here (JIT on first use) and needs the torch just installed
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-build-isolation deepspeed transformers
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# pytest exits 5 when it collects nothing: that is not a failure; any other non-zero is.
# Two workers: most tests wait on a detached run or a launcher, so two side by side use
# the 2-core machine's CPU that one alone leaves idle. loadfile keeps each module on one
# worker (its module fixtures built once, tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: install
	$(BIN)/minimind demo $(DEMO_ARGS)

bench: install
	$(BIN)/python bench/run.py --json

clean:
	rm -rf $(VENV) build *.egg-info
