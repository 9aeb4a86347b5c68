# Two commands (README): `make demo` runs the pipeline end to end on the demo dataset,
# `make test` runs the test suite. Both create the virtualenv and install on first use.
# The demo runs two projects, each reading config/config.yaml (the settings for your data) and then
# its own file on top: the pretraining project (DEMO_PRETRAIN_CONFIG, the unlabelled cohort's region
# time series) writes an encoder bundle; the labelled project (DEMO_CONFIG) fine-tunes from it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fmriflow-installed
# the demo needs the package alone: the test, lite (antspyx), slurm and transformers extras
# are for `make test` (the slurm plugin also costs seconds at every Snakemake start)
DEMO_STAMP := $(VENV)/.fmriflow-core-installed
DEMO_DIR ?= data/demo
DEMO_SUBJECTS ?= 24
# the pretraining cohort: 48 runs of 400 volumes (each run costs two jobs of about 1.2 s of CPU: fewer,
# longer runs keep its stage near 3 minutes of 2 cores for twice the labelled cohort's subjects)
DEMO_PRETRAIN_SUBJECTS ?= 48
DEMO_PRETRAIN_TRS ?= 400
DEMO_PRETRAIN_CONFIG ?= config/demo-pretrain.yaml
DEMO_CONFIG ?= config/demo.yaml
JOBS ?= 2
DEMO_START := $(shell date +%s)
PYTEST_ARGS ?=

# Scripts of Snakemake jobs must find the venv's python and fmriflow.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test clean

install: $(STAMP)

$(DEMO_STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c requirements.lock -e .
	@touch $@

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c requirements.lock -e ".[test,lite,slurm,transformers]"
	# antspyx (preproc.mode lite) declares scipy<1.16, which would downgrade scipy for the
	# whole project; the functions fmriflow uses run with the locked scipy (tests/test_lite.py)
	$(BIN)/python -m pip install --no-deps -c requirements.lock antspyx
	@touch $@

demo: $(DEMO_STAMP)
	@test -f $(DEMO_DIR)/bids/dataset_description.json -a -f $(DEMO_DIR)/pretraining/xcp_d/participants.tsv || \
		$(BIN)/fmriflow demo-data $(DEMO_DIR) --subjects $(DEMO_SUBJECTS) \
			--pretraining-subjects $(DEMO_PRETRAIN_SUBJECTS) --pretraining-trs $(DEMO_PRETRAIN_TRS) \
			--jobs $(JOBS) --overwrite
	@echo "make demo, stage 1 of 2: pretraining project ($(DEMO_PRETRAIN_CONFIG)), writes the encoder bundle"
	$(BIN)/snakemake --profile profiles/local --cores $(JOBS) --configfile $(DEMO_PRETRAIN_CONFIG)
	@echo "make demo, stage 2 of 2: labelled project ($(DEMO_CONFIG)), fine-tunes from that bundle"
	$(BIN)/snakemake --profile profiles/local --cores $(JOBS) --configfile $(DEMO_CONFIG)
	@$(BIN)/fmriflow finetune-summary results/finetune/response --truth $(DEMO_DIR)/ground_truth/regions.tsv
	@echo "Report: $(abspath results/report/fmriflow_report.html)"
	@$(BIN)/fmriflow timings --since $(DEMO_START) --benchmarks results/logs/benchmarks
	@echo "make demo: $$(( $$(date +%s) - $(DEMO_START) )) s wall, install and demo data included"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
