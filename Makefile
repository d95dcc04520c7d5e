# nnprobe developer commands. Every target creates the virtual environment (.venv/) when missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install protos check-protos postgresql chromium lint format test test-unit test-service test-system up demo \
	bench bench-load gpu-check deploy-lint test-containers triton-env clean

install: $(STAMP)

$(STAMP): requirements-dev.txt sdk/pyproject.toml services/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt \
		--config-settings editable_mode=compat -e ./sdk -e ./services
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/buf lint

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy sdk/nnprobe services/nnprobe_services scripts deploy
	$(BIN)/mypy bench demo
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_sizes.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: check-protos postgresql chromium
	$(BIN)/pytest $(PYTEST_ARGS)

# The job-store and replica tests start their own PostgreSQL server from Debian's server programs.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ echo "== installing Debian's postgresql"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The notebook test renders an executed example to HTML and loads it in Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ echo "== installing Debian's chromium"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test-unit test-service test-system: test-%: $(STAMP) postgresql chromium
	$(BIN)/pytest tests/$* $(PYTEST_ARGS)

up: $(STAMP)
	$(BIN)/python scripts/up.py

demo: $(STAMP)
	$(BIN)/python demo/walkthrough.py

bench: $(STAMP)
	@for script in $(filter-out bench/load.py,$(wildcard bench/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done

# Triton's tritonclient and perf_analyzer in .venv-triton/ (they need protobuf < 7; the tests make it too).
triton-env: $(STAMP)
	$(BIN)/python scripts/triton_env.py --perf-analyzer

gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

bench-load: $(STAMP)
	$(BIN)/python bench/load.py

deploy-lint: $(STAMP)
	deploy/lint.sh

test-containers: $(STAMP)
	deploy/ci-containers.sh

clean:
	rm -rf $(VENV) .venv-triton .venv-triton.lock demo-output bench-output .pytest_cache .mypy_cache .ruff_cache
