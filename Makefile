# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup run run-text lint test repro mlflow-ui prefect-ui clean

# Create the venv if missing and install the project (re-installs when pyproject.toml changes).
# Bytecode is compiled at install (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, as on
# this machine, Python would otherwise recompile every imported module in every process.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)
	@test -d .git || git init --quiet

## The main job: the whole pipeline on the bundled sample (or params.yaml's data).
run: setup
	$(BIN)/sslpipe run $(ARGS)

## The same pipeline on text: MLM on the bundled AG News slice (1,500 articles; 1,000 labeled).
## A pool this small needs a small vocabulary and more, smaller steps (docs/methods.md).
TEXT_DEMO := --data data/sample/news.csv.gz --eval-data data/sample/news_labeled.csv.gz --set pretrain.method=mlm \
	--set text.vocab_size=2000 --set text.epochs=25 --set text.batch_size=32 --set text.lr=0.02
run-text: setup
	$(BIN)/sslpipe run $(TEXT_DEMO) $(ARGS)

## Lint and format check (ruff, at pyproject's line length), then the test suite on real Prefect, MLflow, GX and DVC.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Two workers (pytest-xdist), one thread each (tests/conftest.py): on 2 cores about twice as
## fast as one, since many tests wait on servers and subprocesses. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## The same stages through DVC.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

## Listens where the Prefect artifacts' MLflow links point: $$MLFLOW_UI_URL, default http://127.0.0.1:5000
## (tasks/registry/tracking.py, DEFAULT_UI).
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		$$($(BIN)/python -c 'from tasks.registry.tracking import ui_listen_args; print(ui_listen_args())')

prefect-ui: setup
	$(BIN)/prefect server start

clean:
	rm -rf data/prepared models reports
