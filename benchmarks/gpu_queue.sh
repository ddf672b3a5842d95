#!/usr/bin/env bash
# Train a queue of runs on one GPU machine inside one device call, many processes at once, and bring back
# their records and weights.
#
#   bash benchmarks/gpu_queue.sh OUT_DIR QUEUE_FILE SECONDS
#
# QUEUE_FILE holds one run per line: the runner module, then its overrides, e.g.
#   mnist experiment=rts_st_cnn_tps profile=fast seed=2
#   coloc data=coloc_t digit=3 profile=paper
# Every run gets logger=none trainer.device=$DEVICE trainer.num_threads=1. JOBS processes (default 4) take
# lines in order as they free up. On one H200 (2026-12-04, results/bench/gpu_h200_2026-12-04_*) processes
# side by side shared the GPU rather than adding to it: 14 at once trained about 100k images/s together
# (7k each), 4 at once 90-110k, one alone 73-78k (a CNN or ST-CNN step at batch 256); so more jobs only
# stretch every run, and a deadline then leaves more of them unfinished.
# SECONDS after the script starts, every unfinished run gets SIGINT (it checkpoints) and the results are packed.
#
# Needs .gpu_kit/ (make gpu-kit) next to the code; first, in order, before the queue starts:
#   the kit's Hydra wheels into a temporary site, the MNIST sets (seconds), and with BENCH="<args>" one
#   benchmarks/bench_mnist.py run alone on the device (its times are clean: nothing else runs). With
#   TEST_MARK (e.g. gpu) the tests of that mark run beside the queue (correctness only, not timing).
# Into OUT_DIR, as it goes (a call cut short keeps what was written):
#   session.txt      environment, MNIST sets, bench, tests, and one line per run started and ended
#   runs.tar.gz      every run's record.json, log, pictures, and the runners' own logs (runs/queue/)
#   weights.tar.NN   model.pt of finished runs, then checkpoint.pt of unfinished ones (a CPU resumes them:
#                    relaunch the same command there), as many as WEIGHT_MIB (default 56) allows, in parts
#                    of 15 MiB: the device tool returns 8 files, 64 MiB in all. Unpack: cat weights.tar.* | tar -x
# Records name the commit in $STN_COMMIT when the tree has no .git (else the kit's, see gpu_kit_env.sh).
#
# To check this script on a CPU: DEVICE=cpu JOBS=2 with a queue of profile=smoke runs.
set -uo pipefail

OUT=${1:?usage: gpu_queue.sh OUT_DIR QUEUE_FILE SECONDS}
QUEUE=${2:?usage: gpu_queue.sh OUT_DIR QUEUE_FILE SECONDS}
SECONDS_LEFT=${3:?usage: gpu_queue.sh OUT_DIR QUEUE_FILE SECONDS}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
KIT=${KIT:-.gpu_kit}
JOBS=${JOBS:-4}
WEIGHT_MIB=${WEIGHT_MIB:-56}
mkdir -p "$OUT" runs/queue
OUT=$(cd "$OUT" && pwd)
QUEUE=$(cd "$(dirname "$QUEUE")" && pwd)/$(basename "$QUEUE")
LOG=$OUT/session.txt
deadline=$(( $(date +%s) + SECONDS_LEFT ))  # from the script's start: setup and bench count
say() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }

# shellcheck source=benchmarks/gpu_kit_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_kit_env.sh"

say environment
{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, sys, os; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none', '| cpus', os.cpu_count())"
    git log -1 --format='commit %H %s' 2>/dev/null || echo "no git checkout; STN_COMMIT=${STN_COMMIT:-unset}"
    echo "queue: $(grep -cv '^\s*\(#\|$\)' "$QUEUE") runs, $JOBS at once, until $(date -u -d "@$deadline" +%H:%M:%S)"
} 2>&1 | tee -a "$LOG"

say "MNIST sets"
"$PY" data_scripts/build_mnist_sets.py 2>&1 | tail -3 | tee -a "$LOG" || exit 1

if [[ -n ${BENCH:-} ]]; then
    say "bench, alone on the device: bench_mnist.py --device $DEVICE $BENCH"
    # shellcheck disable=SC2086  # BENCH is a list of flags
    timeout "${BENCH_SECONDS:-120}" "$PY" benchmarks/bench_mnist.py --device "$DEVICE" $BENCH 2>&1 | tee -a "$LOG"
fi

if [[ -n ${TEST_MARK:-} ]]; then
    # Beside the queue: the tests check results, not times. Their whole output goes into runs.tar.gz (a
    # failure's message is the point of running them there).
    ( timeout "${TEST_SECONDS:-300}" "$PY" -m pytest -q -rfE --tb=short -W ignore::UserWarning \
        -m "$TEST_MARK" -p no:cacheprovider > runs/queue/tests.txt 2>&1 ) &
    tests_pid=$!
fi

run_one() {  # one queue line: module overrides...
    local left name start rc
    left=$(( deadline - $(date +%s) ))
    name=$(echo "$*" | tr -c 'A-Za-z0-9_.=-' '_' | tr '=' '-')
    if (( left < 30 )); then echo "skipped (deadline): $*"; return; fi
    start=$(date +%s)
    echo "start $(date -u +%H:%M:%S): $*"
    # SIGINT first: the training loop checkpoints on Ctrl-C.
    timeout --signal=INT --kill-after=20 "$left" "$PY" -m "experiments.$1" "${@:2}" logger=none \
        trainer.device="$DEVICE" trainer.num_threads=1 > "runs/queue/$name.log" 2>&1
    rc=$?
    echo "end   $(date -u +%H:%M:%S): rc $rc after $(( $(date +%s) - start )) s: $*"
    [[ $rc == 0 ]] || tail -3 "runs/queue/$name.log" | sed 's/^/      /'
}
export -f run_one
export deadline DEVICE PY

say "queue"
grep -v '^\s*\(#\|$\)' "$QUEUE" | xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _ 2>&1 | tee -a "$LOG"
[[ -n ${tests_pid:-} ]] && { wait "$tests_pid"; say tests; { grep -E "^(FAILED|ERROR)" runs/queue/tests.txt; tail -1 runs/queue/tests.txt; } | tee -a "$LOG"; }
say "finished runs: $(find runs -name record.json | wc -l)"
find runs -name record.json | sort | tee -a "$LOG"

# Records, logs and pictures of every run: small, all of them.
find runs \( -name record.json -o -name '*.log' -o -name '*.png' -o -name '*.txt' -o -name '*.yaml' \) -type f \
    | tar -czf "$OUT/runs.tar.gz" -T -
# Weights up to the cap, most wanted first: finished runs' model.pt (the co-localisation embedding, full-budget
# runs, then by seed: seed 1 of every cell first), then unfinished runs' checkpoint.pt in the same order.
budget=$(( WEIGHT_MIB * 1024 * 1024 ))
: > "$OUT/.weights"
rank() {  # path -> "rank path"
    local kind=0
    [[ $1 == */checkpoint.pt ]] && kind=1
    case $1 in
        */embedding/*) echo "${kind}0 $1" ;;
        */paper/*) echo "${kind}1 $1" ;;
        */seed1/*) echo "${kind}2 $1" ;;
        */seed2/*) echo "${kind}3 $1" ;;
        *) echo "${kind}4 $1" ;;
    esac
}
while read -r _ file; do
    folder=$(dirname "$file")
    [[ $file == */checkpoint.pt && -f $folder/model.pt ]] && continue  # finished: its model.pt is what counts
    size=$(stat -c %s "$file")
    if (( size > budget )); then echo "weights left behind (over WEIGHT_MIB): $file" | tee -a "$LOG"; continue; fi
    budget=$(( budget - size ))
    echo "$file" >> "$OUT/.weights"
done < <(find runs \( -name model.pt -o -name checkpoint.pt \) | while read -r f; do rank "$f"; done | sort)
if [[ -s $OUT/.weights ]]; then
    tar -cf - -T "$OUT/.weights" | split -b 15M -d - "$OUT/weights.tar."
fi
rm -f "$OUT/.weights"
ls -la "$OUT" | tee -a "$LOG"
