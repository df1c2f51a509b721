# forgetlab: `make run` runs the default study, `make test` runs the tests; both bootstrap .venv.
VENV ?= .venv
PYTHON ?= python3
CONFIG ?= config/config.yaml
CORES ?= all
STUDY ?= default
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run smoke test test-unit pull push verify mlflow-ui mlflow-server benchmark

# torch first, with pip: pip reads the machine's wheel folders and constraints (where a CPU build of the pin
# may lie), uv does not. Then the package with uv, which resolves and installs the rest in about half pip's
# time and, with --compile-bytecode, writes the bytecode pip writes (benchmarks/install_speed.py); should uv
# fail (no index it can reach, say), pip installs the package instead.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 'uv>=0.5'
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]' \
		|| $(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install  ## the default study (config/config.yaml)
	snakemake --cores $(CORES) --configfile $(CONFIG)

smoke: install  ## the micro study of the tests
	snakemake --cores $(CORES) --configfile config/smoke.yaml

# two pytest workers, one test file each at a time: the SLURM, workflow and resume tests spend much
# of their time waiting on schedulers and subprocesses, so two files overlap well even on 2 cores
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

test-unit: install  ## the fast inner loop: tests marked unit (no DAG, subprocess jobs, SLURM or GPU)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m unit tests

push: install  ## push a finished study (tracked by its `track` rule) to the default DVC remote
	dvc push data/$(STUDY).dvc results/$(STUDY).dvc

pull: install  ## restore a finished study (STUDY=..., CONFIG=...) from the DVC remote
	forgetlab pull $(STUDY) --configfile $(CONFIG)

verify: install  ## rerun a sample of a finished study's jobs and compare (STUDY=..., VERIFY_ARGS='--jobs 10 --threads 4')
	forgetlab verify $(STUDY) $(VERIFY_ARGS)

mlflow-ui: install
	mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000

# a tracking server for many concurrent jobs; point them at it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT). Artifacts are proxied (uploaded over HTTP).
PORT ?= 5000
MLFLOW_BACKEND ?= sqlite:///$(abspath results/mlflow.db)
MLFLOW_ARTIFACTS ?= $(abspath results/mlartifacts)

mlflow-server: install  ## PORT=5000, MLFLOW_BACKEND=postgresql://..., MLFLOW_ARTIFACTS=s3://... or a directory
	mkdir -p results
	mlflow server --backend-store-uri '$(MLFLOW_BACKEND)' --serve-artifacts --artifacts-destination '$(MLFLOW_ARTIFACTS)' \
		--host 127.0.0.1 --port $(PORT)

benchmark: install
	$(BIN)/python benchmarks/study_walltime.py
	$(BIN)/python benchmarks/train_loop_vs_trainer.py
