#!/usr/bin/env bash
# The SLURM path's times on this machine (docs/slurm.md, the README's SLURM lines): how long the test cluster
# of scripts/slurm_cluster.sh takes to come up, what a requeue adds, the README's sweep end to end, and each
# test marked slurm. Run as root on a Debian machine with the packages installed (a first `up` installs them).
# usage: bash benchmarks/slurm.sh OUT_FILE
# It restarts the cluster in $STN_SLURM_DIR from a clean state (its jobs, database and logs are deleted) and
# leaves it up.
set -uo pipefail
out=$(realpath -m "$1")
repo=$(git rev-parse --show-toplevel)
cd "$repo" || exit 1
commit=$(git rev-parse --short HEAD)
cluster="bash scripts/slurm_cluster.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
eval "$($cluster env)"
{
    echo "# SLURM test cluster (scripts/slurm_cluster.sh) at $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPU cores"
    echo "# other load on the machine: $(uptime | sed 's/.*load average/load average/')"
} >"$out"
timed() { # timed NAME COMMAND...: "<seconds> s  rc=<status>  <name>"
    local name=$1 start
    shift
    start=$(date +%s.%N)
    "$@" >"$work/step.log" 2>&1
    local rc=$?
    printf '%6.1f s  rc=%d  %s\n' "$(awk "BEGIN {print $(date +%s.%N) - $start}")" "$rc" "$name" | tee -a "$out"
    [ $rc -eq 0 ] || tail -5 "$work/step.log" | sed 's/^/    /' >>"$out"
}

$cluster clean >/dev/null 2>&1
timed "up from a clean state (packages installed)" $cluster up
timed "up again while up" $cluster up
$cluster down >/dev/null 2>&1
timed "up after down" $cluster up

# A requeue: a job warned (SIGUSR2) before its 1-minute limit requeues itself as submitit does; the time
# from the warning to its second start is what each requeue adds.
cat >"$work/requeue.sh" <<EOF
#!/bin/bash
#SBATCH --time=1 --signal=B:USR2@5 --requeue --open-mode=append -o $work/requeue.out -c 1 --mem=100
echo "start \$(date +%s.%N) \${SLURM_RESTART_COUNT:-0}"
[ "\${SLURM_RESTART_COUNT:-0}" -ge 1 ] && exit 0
trap 'echo "warned \$(date +%s.%N)"; scontrol requeue \$SLURM_JOB_ID; exit 0' USR2
while true; do sleep 0.2; done
EOF
sbatch -Q "$work/requeue.sh"
for _ in $(seq 240); do
    [ "$(grep -c '^start' "$work/requeue.out" 2>/dev/null)" = 2 ] && break
    sleep 0.5
done
awk '/^start/ {n++; s[n] = $2} /^warned/ {w = $2}
    END {if (n < 2) print "requeue: no second start within 120 s"; else
         printf "%6.1f s  warned after (1-minute limit, --signal=USR2@5)\n%6.1f s  from the warning to the second start (a requeue)\n", w - s[1], s[2] - w}' \
    "$work/requeue.out" | tee -a "$out"

export STN_RUNS=$work/runs WANDB_MODE=disabled
timed "the README's sweep: 2 MNIST cells, profile=smoke, through hydra/launcher=slurm" \
    .venv/bin/python -m experiments.mnist -m hydra/launcher=slurm hydra.launcher.partition=debug \
    hydra.launcher.gpus_per_node=0 hydra.launcher.tasks_per_node=1 hydra.launcher.cpus_per_task=1 \
    hydra.launcher.mem_gb=2 hydra.launcher.timeout_min=10 experiment=r_fcn,r_cnn profile=smoke logger=none \
    data.source=synthetic
timed "make test-slurm (each test below)" make test-slurm PYTEST_ARGS="--durations=0"
grep -E '^[0-9.]+s call' "$work/step.log" | sed 's/^/# /' >>"$out"
grep -E '(passed|failed|skipped)' "$work/step.log" | tail -1 | sed 's/^/# /' >>"$out"
echo "# made by: bash benchmarks/slurm.sh $1" >>"$out"
