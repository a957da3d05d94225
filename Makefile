# Two entry points: `make demo` and `make test`. Both create .venv and install pinned dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint parity-env parity clean

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	# the OpenAI reference tokenizer (test oracle); --no-deps keeps torchvision out
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0
	$(BIN)/pip install -q --no-deps -e .
	# headless Chromium for the web-page test (Debian package; Playwright drives it, downloads nothing)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: chromium not installed; the web-page test will be skipped"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cliplab demo --output runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Opt-in reference tier against open_clip: a separate 5.5 GB environment (torch 2.14.1 + torchvision 0.29.1).
parity-env:
	test -x .venv-parity/bin/python || $(PY) -m venv .venv-parity
	.venv-parity/bin/pip install -q torch==2.14.1 torchvision==0.29.1 open_clip_torch transformers pytest \
		safetensors tokenizers ftfy regex pyyaml tqdm pillow numpy
	.venv-parity/bin/pip install -q --no-deps -e .

parity: parity-env
	.venv-parity/bin/python -m pytest -q -m parity tests/parity

clean:
	rm -rf $(VENV) .venv-parity
