#!/usr/bin/env bash
# The README's set-up and quickstart on a fresh clone, each step timed: what a new user waits for.
# usage: bash benchmarks/quickstart.sh OUT_FILE [MNIST_SOURCE] [--no-test]
# Clones HEAD into a temporary folder (so nothing of this checkout is reused: no .venv, data/ or runs/), runs
# the README's commands in order and writes one line per step (wall seconds, exit status) to OUT_FILE.
set -uo pipefail
out=$(realpath -m "$1"); source=${2:-${STN_MNIST_SOURCE:-}}; run_tests=1
[ "${3:-}" = "--no-test" ] && run_tests=0
repo=$(git rev-parse --show-toplevel); commit=$(git -C "$repo" rev-parse --short HEAD)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/stn-repro" && cd "$work/stn-repro" || exit 1
{
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n1)
  echo "# README quickstart on a fresh clone of $commit, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPU cores (${cpu:-$(uname -m)})"
  echo "# other load on the machine: $(uptime | sed 's/.*load average/load average/')"
} > "$out"
step() {  # step NAME COMMAND...: run it, log "<seconds> s  rc=<status>  <name>"
  local name=$1; shift; local start=$SECONDS
  "$@" > "$work/$name.log" 2>&1; local rc=$?
  printf '%6d s  rc=%d  %s\n' $((SECONDS - start)) "$rc" "$name: $*" | tee -a "$out"
  [ $rc -eq 0 ] || tail -5 "$work/$name.log" | sed 's/^/    /' >> "$out"
}
total=$SECONDS
step install make install
[ $run_tests -eq 1 ] && step test make test
before=$SECONDS
step data env ${source:+STN_MNIST_SOURCE=$source} make data-mnist
step smoke make reproduce-mnist PROFILE=smoke SEEDS=1
step quick-cell .venv/bin/python -m experiments.mnist experiment=r_st_cnn_affine profile=quick
step quick-table make table PROFILE=quick
printf '%6d s  from data to the quick table\n' $((SECONDS - before)) | tee -a "$out"
printf '%6d s  in all\n' $((SECONDS - total)) | tee -a "$out"
grep -h "r-st_cnn-affine seed 1:" "$work"/quick-cell.log | sed 's/^/# /' >> "$out"
ls runs/tables >> "$out" 2>&1
