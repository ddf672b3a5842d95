# stn-repro: every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The tested torch pins; override for another build. A machine without a GPU can take the CPU-only wheels
# (about 200 MB instead of about 2.5 GB of CUDA libraries; the same code and results):
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PROFILE ?= paper
PYTEST_ARGS ?=
# RUNS=<folder>: where `make table` and `make missing` read records (default: the runs folder, $$STN_RUNS
# or runs/, where the runners write); e.g. RUNS=results/records/mnist_fast for the committed ones.
RUNS ?=
RUNS_ARG = $(if $(RUNS),--runs $(RUNS),)
# WANDB=1: `make table` also logs each table to W&B (offline unless WANDB_MODE=online; files in runs/wandb/).
WANDB ?= 0
# CONFIRM=1: start a reproduction even where stn-plan estimates the paper's protocol on a CPU at days.
CONFIRM ?= 0

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format clean data-mnist sample-sheets park unpark

help:  ## list every target
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

install:  ## create .venv and install the package with its dev extra (TORCH_INDEX=...cpu: CPU-only torch)
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"

test:  ## run the default test suite (CPU, a few minutes; slow/GPU tests deselected, real-data tests skip without MNIST)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all:  ## run every test, slow ones included
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

# --- SLURM (issue 51): a single-node test cluster with accounting, and the tests that need one --------------
# STN_SLURM_DIR: the cluster's folder (configs, database, logs; default /tmp/stn-slurm). docs/slurm.md.
STN_SLURM_DIR ?= /tmp/stn-slurm
.PHONY: slurm-up slurm-down test-slurm

slurm-up:  ## bring up a single-node SLURM cluster with accounting on this Debian machine (root; apt-get the first time); idempotent
	STN_SLURM_DIR=$(STN_SLURM_DIR) bash scripts/slurm_cluster.sh up

slurm-down:  ## stop that cluster's jobs and the daemons slurm-up started
	STN_SLURM_DIR=$(STN_SLURM_DIR) bash scripts/slurm_cluster.sh down

test-slurm:  ## run the tests marked slurm on the cluster slurm-up brought up (they skip, saying why, where none answers)
	SLURM_CONF=$${SLURM_CONF:-$(STN_SLURM_DIR)/slurm.conf} $(PY) -m pytest -m slurm -p no:cacheprovider $(PYTEST_ARGS)

lint:  ## ruff check and format check, then the layering contract (import-linter: pyproject.toml [tool.importlinter])
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(BIN)/lint-imports

format:  ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:  ## remove caches (keeps .venv, data/ and runs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# --- Data ---------------------------------------------------------------------------------------------------

data-mnist:  ## fetch MNIST (offline: STN_MNIST_SOURCE=<folder with the 4 files>) into STN_DATA or data/, build every distorted set; idempotent
	$(PY) data_scripts/build_mnist_sets.py

sample-sheets:  ## draw results/samples/<set>.png sample grids of every set from the real MNIST, and of the synthetic SVHN stand-in's crops (after data-mnist)
	$(PY) data_scripts/sample_sheets.py

SVHN_ARGS ?=
.PHONY: data-svhn data-svhn-synthetic

data-svhn:  ## import SVHN format 1 (offline: STN_SVHN_SOURCE=dir with train/test[/extra] .tar.gz or folders; else download) into svhn_sets/; SVHN_ARGS="--extra"
	$(PY) data_scripts/build_svhn_sets.py $(SVHN_ARGS)

data-svhn-synthetic:  ## build the synthetic SVHN-format stand-in (version 2: off-centre digits, clutter) from MNIST (after data-mnist; about 23 min on one core, 2.0 GB) and import it; not SVHN
	$(PY) data_scripts/build_svhn_sets.py --synthetic $(SVHN_ARGS)

# --- Tables -------------------------------------------------------------------------------------------------
EXPERIMENT ?= mnist
.PHONY: table tables missing

table:  ## tables of EXPERIMENT=mnist|svhn|addition|coloc|cub for PROFILE from your runs (RUNS=...) into runs/tables/; WANDB=1 logs them to W&B
	$(BIN)/stn-table --experiment $(EXPERIMENT) --profile $(PROFILE) $(RUNS_ARG) $(if $(filter 1,$(WANDB)),--wandb,)

tables:  ## rebuild every committed table in results/ from results/records (byte for byte what is committed)
	$(BIN)/stn-table --committed

missing:  ## list the runs of Table 1 (EXPERIMENT=mnist), 4 (addition) or 5 (coloc) for PROFILE and SEEDS that have no finished record in the runs folder (RUNS=...), as commands
	$(BIN)/stn-missing --experiment $(EXPERIMENT) --profile $(PROFILE) --seeds $(SEEDS) $(if $(RUNS),--records $(RUNS),)

park:  ## at the end of a session: copy every unfinished run's checkpoint from runs/ to parked/ (then commit parked/)
	$(BIN)/stn-park save

unpark:  ## at the start of the next: put parked checkpoints back into runs/ and print each run's relaunch command
	$(BIN)/stn-park restore

# --- Distorted MNIST experiments (Table 1 and TC) -----------------------------------------------------------
SEEDS ?= 1,2,3
MNIST_SETS ?= r,rts,p,e
# STACK=1: one job per cell trains its SEEDS stacked (seeds=[1,2,3]; for GPUs); 0: one job per seed (seed=1,2,3).
STACK ?= 0
SEED_ARG = $(if $(filter 1,$(STACK)),'seeds=[$(SEEDS)]',seed=$(SEEDS))
# JOBS=4: run 4 jobs of each sweep at once in separate processes (Hydra's joblib launcher; several small
# models share one GPU). 1: one after the other.
JOBS ?= 1
LAUNCH_ARG = $(if $(filter-out 1,$(JOBS)),hydra/launcher=parallel hydra.launcher.n_jobs=$(JOBS),)
.PHONY: reproduce-mnist params-mnist

# BUDGET: the parameter budget's reading, about_400k (default) or width_ranges (configs/budget/).
BUDGET ?= about_400k
MNIST_SWEEP_1 = profile=$(PROFILE) budget=$(BUDGET) $(SEED_ARG) data=$(MNIST_SETS),tc model=fcn,cnn transformer=none
MNIST_SWEEP_2 = profile=$(PROFILE) budget=$(BUDGET) $(SEED_ARG) data=$(MNIST_SETS) model=st_fcn,st_cnn transformer=affine,projective,tps
MNIST_SWEEP_3 = profile=$(PROFILE) budget=$(BUDGET) $(SEED_ARG) data=tc model=st_fcn,st_cnn transformer=affine
reproduce-mnist:  ## run Table 1 + TC (PROFILE=paper|fast|quick|smoke, SEEDS=1,2,3, BUDGET=..., JOBS=4, STACK=1), after a plan with its time on this machine; then its table in runs/tables/
	$(BIN)/stn-plan mnist $(MNIST_SWEEP_1) --and $(MNIST_SWEEP_2) --and $(MNIST_SWEEP_3) $(if $(filter 1,$(CONFIRM)),--confirm,)
	$(PY) -m experiments.mnist -m $(LAUNCH_ARG) $(MNIST_SWEEP_1)
	$(PY) -m experiments.mnist -m $(LAUNCH_ARG) $(MNIST_SWEEP_2)
	$(PY) -m experiments.mnist -m $(LAUNCH_ARG) $(MNIST_SWEEP_3)
	$(MAKE) table PROFILE=$(PROFILE)

params-mnist:  ## print every Table 1 model's parameter count and widths (BUDGET=about_400k|width_ranges)
	$(BIN)/stn-params $(if $(filter width_ranges,$(BUDGET)),--budget width_ranges,)

# --- Speed (issue 5) ------------------------------------------------------------------------------------------
BENCH_ARGS ?=
GPU_OUT ?= gpu_session
QUEUE ?= gpu_queue.txt
QUEUE_SECONDS ?= 540
PROJECTION_ARGS ?=
.PHONY: bench gpu-projection gpu-kit gpu-session gpu-queue

PEAK_ARGS ?= --profile
bench:  ## time the tutorial-style loop vs the engine, then each cell's GFLOP/s against this CPU's measured peak (a few minutes; BENCH_ARGS="--device cuda ...", PEAK_ARGS="--cells all --out results/bench")
	$(PY) benchmarks/bench_mnist.py $(BENCH_ARGS)
	$(if $(findstring cuda,$(BENCH_ARGS)),,$(PY) benchmarks/bench_peak.py $(PEAK_ARGS))

gpu-projection:  ## bounds on the Table 1 protocol's time on one GPU from counts and this host's timing (no GPU needed; PROJECTION_ARGS="--gpu h200 --jobs 4,32")
	$(PY) -m benchmarks.gpu_projection $(PROJECTION_ARGS)

gpu-kit:  ## gather into .gpu_kit/ what a bare offline GPU machine lacks (Hydra wheels, MNIST); needs PyPI
	PY=$(PY) bash benchmarks/gpu_kit.sh

gpu-session:  ## on a GPU machine with .gpu_kit/: tests, bench, projection, speed settings -> GPU_OUT/
	bash benchmarks/gpu_session.sh $(GPU_OUT)

gpu-queue:  ## on a GPU machine with .gpu_kit/: train the runs listed in QUEUE (one per line) for QUEUE_SECONDS -> GPU_OUT/
	bash benchmarks/gpu_queue.sh $(GPU_OUT) $(QUEUE) $(QUEUE_SECONDS)

# --- SVHN multi-digit (Table 2) -------------------------------------------------------------------------------
# SVHN_SETS: svhn64,svhn128 (real SVHN, make data-svhn) or synthetic_svhn64,synthetic_svhn128 (the stand-in).
# PROFILE=quick: quarter-width models, 4,000 iterations of 32 (a CPU profile: configs/profile/svhn/quick.yaml);
# paper: the paper's budget.
SVHN_SETS ?= svhn64,svhn128
SVHN_SEEDS ?= 1
.PHONY: reproduce-svhn bench-svhn

reproduce-svhn:  ## run Table 2 (SVHN_SETS=svhn64,svhn128 or synthetic_svhn64; PROFILE=paper|quick; SVHN_SEEDS=1,2,3), then its table in runs/tables/
	$(PY) -m experiments.svhn -m $(LAUNCH_ARG) profile=$(PROFILE) seed=$(SVHN_SEEDS) data=$(SVHN_SETS) model=svhn_cnn,st_cnn_single,st_cnn_multi
	$(MAKE) table EXPERIMENT=svhn PROFILE=$(PROFILE)

bench-svhn:  ## time ST-CNN Multi and Single against the CNN, forward and backward (the paper: Multi 6% slower)
	$(PY) benchmarks/bench_svhn.py $(BENCH_ARGS)

# --- MNIST addition (Table 4) ---------------------------------------------------------------------------------
# PROFILE=paper|fast|quick|smoke are Table 1's profiles (the paper gives addition no schedule of its own;
# fast holds out the validation pairs).
.PHONY: reproduce-addition

reproduce-addition:  ## run Table 4, MNIST addition (PROFILE=paper|fast|quick, SEEDS=1,2,3, JOBS=4), then its table in runs/tables/
	$(PY) -m experiments.addition -m $(LAUNCH_ARG) profile=$(PROFILE) seed=$(SEEDS) model=addition_fcn,addition_cnn transformer=none
	$(PY) -m experiments.addition -m $(LAUNCH_ARG) profile=$(PROFILE) seed=$(SEEDS) model=addition_st_fcn,addition_2x_st_fcn transformer=affine,projective,tps
	$(MAKE) table EXPERIMENT=addition PROFILE=$(PROFILE)

# --- Co-localisation (Table 5) --------------------------------------------------------------------------------
# PROFILE=quick (CPU); fast (CPU: e() at 5% of the Sect. 2 protocol with the fast optimiser, each class at
# the paper profile's 2,000 steps); paper (e() at the Sect. 2 protocol: 9.01 h on this 2-core machine, the first
# 26k iterations on a GPU; then 6.36 h for the 60 class runs of Table 5). The first job trains the embedding CNN e()
# once per profile; every other job reuses it.
COLOC_DIGITS ?= 0,1,2,3,4,5,6,7,8,9
COLOC_SETS ?= coloc_t,coloc_tc
COLOC_SEEDS ?= 1
# e(): a finished Table 1 CNN run (configs/embedding/table1.yaml, the committed `fast` P CNN by default);
# COLOC_EMBEDDING=<another CNN run> names another. COLOC_E=plain is the suite's first e() (a CNN on undistorted
# digits, trained by the first job; COLOC_EMBEDDING=results/records/coloc_paper/embedding: the committed one).
COLOC_E ?= table1
COLOC_EMBEDDING ?=
.PHONY: reproduce-coloc

reproduce-coloc:  ## run Table 5, co-localisation: every digit class on T and TC (PROFILE=paper|fast|quick, COLOC_SEEDS=1,2,3), then its table and the found boxes' analysis in runs/tables/
	$(PY) -m experiments.coloc -m $(LAUNCH_ARG) profile=$(PROFILE) seed=$(COLOC_SEEDS) digit=$(COLOC_DIGITS) data=$(COLOC_SETS) embedding=$(COLOC_E) $(if $(COLOC_EMBEDDING),embedding.run_dir=$(COLOC_EMBEDDING))
	$(MAKE) table EXPERIMENT=coloc PROFILE=$(PROFILE)
	$(BIN)/stn-coloc-boxes --profile $(PROFILE)

# --- CUB-200-2011 (Table 3) -----------------------------------------------------------------------------------
# CUB_SYNTHETIC=1: the synthetic stand-in (make data-cub-synthetic) instead of CUB (make data-cub).
# PROFILE=quick: quarter width, 64 px parts (a CPU profile); paper: the paper's (GPUs).
# NPROC=8: each run data-parallel over 8 processes (GPUs) with torchrun; trainer.batch_size stays the global
# batch. CUB_WEIGHTS=/path/to/imagenet_state_dict.pth: every backbone starts from it (else from scratch;
# PROFILE=quick: the ST-CNNs start from the CNN run of their seed, which the first sweep runs first).
CUB_ARGS ?=
CUB_SEEDS ?= 1
CUB_SYNTHETIC ?= 0
NPROC ?= 1
CUB_WEIGHTS ?=
CUB_DATA = $(if $(filter 1,$(CUB_SYNTHETIC)),synthetic_cub,cub)
CUB_RUN = $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC),$(PY))
CUB_WEIGHTS_ARG = $(if $(CUB_WEIGHTS),model.weights=$(CUB_WEIGHTS),)
.PHONY: data-cub data-cub-synthetic reproduce-cub

data-cub:  ## put CUB-200-2011 in data/CUB_200_2011 (offline: STN_CUB_SOURCE=CUB_200_2011.tgz or its folder; else download) and check it
	$(PY) data_scripts/build_cub.py $(CUB_ARGS)

data-cub-synthetic:  ## write the synthetic CUB-format stand-in (two-part "birds" on clutter, 30 classes) into data/synthetic-cub; not CUB
	$(PY) data_scripts/build_cub.py --synthetic $(CUB_ARGS)

reproduce-cub:  ## run Table 3 (PROFILE=paper|quick, CUB_SEEDS=1,2,3, CUB_SYNTHETIC=1, NPROC=8: torchrun data-parallel, CUB_WEIGHTS=...), then its table in runs/tables/
	$(CUB_RUN) -m experiments.cub -m profile=$(PROFILE) seed=$(CUB_SEEDS) data=$(CUB_DATA)224 model=cub_cnn,cub_st_cnn_2x $(CUB_WEIGHTS_ARG)
	$(CUB_RUN) -m experiments.cub -m profile=$(PROFILE) seed=$(CUB_SEEDS) data=$(CUB_DATA)448 model=cub_st_cnn_2x,cub_st_cnn_4x $(CUB_WEIGHTS_ARG)
	$(MAKE) table EXPERIMENT=cub PROFILE=$(PROFILE)
