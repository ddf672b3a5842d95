#!/usr/bin/env bash
# Gather into .gpu_kit/ what a bare, offline GPU machine lacks to run this suite: the pure-Python packages
# its image does not hold (Hydra, its joblib launcher and OmegaConf; it has torch, numpy, scipy, h5py,
# matplotlib, tqdm, joblib and pytest; wandb stays out: the session runs logger=none) and the MNIST files. Run it here, where PyPI is reachable; carry .gpu_kit to the GPU machine
# with the repository and run benchmarks/gpu_session.sh there.
#
#   make gpu-kit                       # STN_MNIST_SOURCE=dir for a local MNIST copy (default ../shared/data/mnist)
set -euo pipefail

KIT=${KIT:-.gpu_kit}
SOURCE=${STN_MNIST_SOURCE:-../shared/data/mnist}
PY=${PY:-.venv/bin/python}

for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [[ ! -f "$SOURCE/$name.gz" && ! -f "$SOURCE/$name" ]]; then
        echo "error: $SOURCE has no $name(.gz); set STN_MNIST_SOURCE to a folder with the MNIST files" >&2
        exit 1
    fi
done

rm -rf "$KIT.partial"
mkdir -p "$KIT.partial/wheels" "$KIT.partial/mnist"
# The same versions as this environment's, so both machines run the code against the same Hydra.
# All four are pure Python (py3-none-any): one wheel serves any interpreter there. antlr4's 4.9.3 is an
# sdist only on PyPI, so it is built into a wheel here.
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$KIT.partial/wheels" \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
    "hydra-joblib-launcher==$(version hydra-joblib-launcher)"
"$PY" -m pip wheel -q --no-deps -w "$KIT.partial/wheels" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
cp "$SOURCE"/*-ubyte* "$KIT.partial/mnist/"
# The tree sent to a GPU machine may travel without .git: records there name this commit (see gpu_session.sh).
commit=$(git rev-parse HEAD)
[[ -z $(git status --porcelain --untracked-files=no) ]] || commit+="+dirty"
echo "$commit" > "$KIT.partial/COMMIT"
rm -rf "$KIT"
mv "$KIT.partial" "$KIT"  # only a complete kit gets the name
du -sh "$KIT" "$KIT"/*
echo "kit ready in $KIT: carry it to the GPU machine and run: bash benchmarks/gpu_session.sh OUT_DIR"
