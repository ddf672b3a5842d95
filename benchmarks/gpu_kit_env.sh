# Sourced by gpu_session.sh and gpu_queue.sh on a bare GPU machine (needs KIT and PY set): check .gpu_kit/,
# install its wheels into a temporary site, and export what the suite reads (PYTHONPATH, STN_DATA, the MNIST
# source, and STN_COMMIT where the tree came without .git).
if [[ ! -d "$KIT/wheels" || ! -d "$KIT/mnist" ]]; then
    echo "error: $KIT/ is missing; run 'make gpu-kit' where PyPI is reachable and carry .gpu_kit along" >&2
    exit 1
fi
SITE=$(mktemp -d)
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KIT"/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export STN_DATA=${STN_DATA:-$PWD/data} STN_MNIST_SOURCE="$KIT/mnist"
if ! git rev-parse HEAD >/dev/null 2>&1 && [[ -z ${STN_COMMIT:-} ]]; then
    # No .git here: run records name the commit the kit was made at (pass STN_COMMIT=<hash> if newer).
    export STN_COMMIT="$(cat "$KIT/COMMIT") (at make gpu-kit)"
    echo "warning: no git checkout; records will name commit $STN_COMMIT" >&2
fi
