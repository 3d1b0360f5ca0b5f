# The two commands a new user needs: `make demo` and `make test` (`make lint`: ruff and mypy, as CI runs them).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint dist wheel-demo bench bench-quick clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,example,bench,recognizer]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m pipecat_rxdrain.demo

test: setup
	$(BIN)/python -m pytest

# What a user of the published package gets: sdist + wheel, the wheel alone in a fresh venv
# (with the extras the example bot needs), and the demo run from outside the checkout.
WHEEL_VENV := .wheel-venv
dist: setup
	rm -rf dist
	$(BIN)/python -m build -q --sdist --wheel -o dist .

wheel-demo: dist
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls dist/*.whl)[example]"
	cd /tmp && $(CURDIR)/$(WHEEL_VENV)/bin/rxdrain --version && $(CURDIR)/$(WHEEL_VENV)/bin/rxdrain demo --quick --plot /tmp/rxdrain-wheel-demo.png
	@# and `rxdrain emulator` from the wheel: it must print its address (it is listening by then) and stop with 0 on SIGINT
	cd /tmp && out=$(CURDIR)/$(WHEEL_VENV)/emulator.out; \
	  $(CURDIR)/$(WHEEL_VENV)/bin/rxdrain emulator --port 0 --sample hello_en > $$out & pid=$$!; \
	  for i in $$(seq 150); do grep -q '^SPEECH_EMULATOR_HOST=' $$out && break; sleep 0.2; done; \
	  kill -INT $$pid; wait $$pid; rc=$$?; grep '^SPEECH_EMULATOR_HOST=' $$out && grep -q '^emulator stopped' $$out && test $$rc -eq 0

# mypy reads its settings (packages, strictness) from pyproject.toml [tool.mypy]; the example bot
# (shipped in the wheel) is checked with the same settings.
lint: setup
	$(BIN)/ruff check pipecat_rxdrain examples
	$(BIN)/ruff format --check pipecat_rxdrain examples
	$(BIN)/mypy
	$(BIN)/mypy examples/twilio_bot/bot.py

bench: setup
	$(BIN)/python -m benchmarks.run --full

bench-quick: setup
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) $(WHEEL_VENV) build dist *.egg-info .pytest_cache
