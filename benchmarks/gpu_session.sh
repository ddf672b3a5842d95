#!/usr/bin/env bash
# Everything one GPU session measures for the fast engine, in one command, on a bare machine.
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# Needs .gpu_kit/ (make gpu-kit, on a machine with PyPI) next to the code. In order, each step's output
# going to OUT_DIR as it runs (so a step cut short by a time limit keeps what it printed):
#   env.txt      GPU, driver, torch and Python versions; the MNIST sets being built
#   tests.txt    the default test suite plus the GPU tests (-m "gpu or not slow")
#   bench.txt    make bench on the GPU: baseline vs engine vs 3 stacked seeds, every Table 1 + TC cell,
#                and the projected wall time of the whole protocol
#   speed.txt    the speed settings head to head (channels_last, bf16, compile, CUDA graphs) on 4 models
#   projection.txt  the counted floors of every cell (benchmarks/gpu_projection.py) on this machine's host,
#                to hold against bench.txt's measured step times
# Five files in all: the device tool brings back at most 8. To train runs there, benchmarks/gpu_queue.sh
# (one seed per process: 3 seeds stacked measured 0.57-0.96x one seed's images/s on an H200).
#
# Environment: DEVICE (default cuda), QUICK=1 (tiny sizes: to check this script itself on a CPU),
# GPU_SPEC (gpu_projection's --gpu, default h100), PY (default python3), KIT (default .gpu_kit), STEPS (the
# steps to run, default "tests bench projection speed"; a device call is limited to 10 minutes, so a session splits them over calls:
# env.txt is written by every call), TEST_MARK (pytest -m, default
# "gpu or not slow"), SPEED_MODELS, SPEED_VARIANTS (';'-separated flag sets), TEST_SECONDS and BENCH_SECONDS
# (time limits of those steps, so that one hung step leaves the rest of a call its time).
set -uo pipefail

OUT=${1:?usage: gpu_session.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
KIT=${KIT:-.gpu_kit}
QUICK=${QUICK:-0}
STEPS=${STEPS:-tests bench projection speed}
TEST_MARK=${TEST_MARK:-gpu or not slow}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

# shellcheck source=benchmarks/gpu_kit_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_kit_env.sh"

step environment | tee "$OUT/env.txt"
{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
    git log -1 --format='commit %H %s' 2>/dev/null || true
    git status --short 2>/dev/null | head -5
} 2>&1 | tee -a "$OUT/env.txt"

step "MNIST sets" | tee -a "$OUT/env.txt"
"$PY" data_scripts/build_mnist_sets.py 2>&1 | tee -a "$OUT/env.txt" || exit 1

if [[ $QUICK == 1 ]]; then
    TEST_ARGS=(tests/test_engine.py -q -x)
    BENCH=(--device "$DEVICE" --batch-size 16 --steps 1 --warmup 1 --workers 0 --stack 2 --project-steps 1
           --project-cells r/fcn --models fcn)
    SPEED_MODELS=fcn; SPEED_STEPS=(--steps 1 --warmup 1 --workers 0 --batch-size 16)
else
    TEST_ARGS=(-q -m "$TEST_MARK" -p no:cacheprovider)
    BENCH=(--device "$DEVICE" --steps 50 --warmup 10 --workers 8 --stack 3 --project-steps 20)
    SPEED_MODELS=${SPEED_MODELS:-fcn,cnn,st_cnn:affine,st_cnn:tps}; SPEED_STEPS=(--steps 50 --warmup 20 --workers 8)
fi

if wanted tests; then
step "tests" | tee "$OUT/tests.txt"
timeout "${TEST_SECONDS:-3600}" "$PY" -m pytest "${TEST_ARGS[@]}" 2>&1 | tail -40 | tee -a "$OUT/tests.txt"
fi

if wanted bench; then
step "bench: baseline vs engine vs stacked, projected protocol" | tee "$OUT/bench.txt"
timeout "${BENCH_SECONDS:-3600}" "$PY" benchmarks/bench_mnist.py "${BENCH[@]}" 2>&1 | tee -a "$OUT/bench.txt"
fi

if wanted projection; then
step "counted floors of every cell (no GPU involved)" | tee "$OUT/projection.txt"
PROJECTION=(--gpu "${GPU_SPEC:-h100}"); [[ $QUICK == 1 ]] && PROJECTION+=(--cells r/fcn --steps 2 --batch-size 16)
timeout "${BENCH_SECONDS:-3600}" "$PY" -m benchmarks.gpu_projection "${PROJECTION[@]}" 2>&1 | tee -a "$OUT/projection.txt"
fi

if wanted speed; then
step "speed settings head to head" | tee "$OUT/speed.txt"
SPEED_VARIANTS=${SPEED_VARIANTS:-;--channels-last;--autocast bf16;--compile;--compile --compile-mode reduce-overhead;\
--channels-last --autocast bf16 --compile --compile-mode reduce-overhead}
IFS=';' read -ra variants <<< "$SPEED_VARIANTS"
for variant in "${variants[@]}"; do
    echo "-- settings: ${variant:-plain}" | tee -a "$OUT/speed.txt"
    # shellcheck disable=SC2086  # the variant is a list of flags
    "$PY" benchmarks/bench_mnist.py --device "$DEVICE" --models "$SPEED_MODELS" --stack 1 --project-cells none \
        "${SPEED_STEPS[@]}" $variant 2>&1 | grep -E "^==|\(b\)|error" | tee -a "$OUT/speed.txt"
done
fi
ls -la "$OUT"
