"""The runs a table still lacks: every (cell, seed) without a finished record, as commands or queue lines.

python -m experiments.missing --profile fast                        # Table 1 + TC, seeds 1-3: commands
python -m experiments.missing --experiment addition --profile paper --seeds 1
python -m experiments.missing --experiment coloc --profile paper --seeds 1   # Table 5: trainer=coloc_paper
python -m experiments.missing --profile fast --queue > queue.txt    # lines for benchmarks/gpu_queue.sh

`make missing` runs the first. A run counts as done when its record says finished in the committed records
(results/records/<experiment>_<profile>/) or in the runs folder ($STN_RUNS, else runs/,
<experiment>/<profile>/); one with a checkpoint is listed with the iteration it resumes from.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stn_repro.missing import EXPERIMENTS, TRAINER_PREFIX, missing_runs, run_state

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def coloc_embedding_dir(profile: str) -> Path:
    """Where ``trainer=coloc_<profile>`` keeps the embedding e(): configs/coloc.yaml's ``embedding.run_dir``,
    composed as ``python -m experiments.coloc`` would (real MNIST, the default embedding seed, $STN_RUNS)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("coloc", overrides=[f"trainer=coloc_{profile}"])
    return Path(cfg.embedding.run_dir)


def check_profile(experiment: str, profile: str) -> None:
    """Raise ValueError naming the known profiles where ``configs/trainer/`` has none called ``profile``."""
    prefix = TRAINER_PREFIX.get(experiment, "")
    # The shared profiles have plain names (paper.yaml); a task's own carry its prefix (coloc_paper.yaml).
    stems = [p.stem for p in (CONFIGS / "trainer").glob("*.yaml")]
    known = sorted(
        s.removeprefix(prefix) for s in stems if (s.startswith(prefix) if prefix else "_" not in s)
    )
    if profile in known:
        return
    raise ValueError(
        f"no {experiment} profile {profile!r} (configs/trainer/{prefix}{profile}.yaml); known: {', '.join(known)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="mnist")
    parser.add_argument("--profile", default="paper", help="the trainer profile: paper, fast, quick, ...")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument(
        "--records",
        type=Path,
        action="append",
        help="folders of <cell>/seed<k>/record.json (default: "
        "results/records/<experiment>_<profile> and the runs folder's <experiment>/<profile>)",
    )
    parser.add_argument("--queue", action="store_true", help="print benchmarks/gpu_queue.sh lines only")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds {args.seeds!r} is not a comma-separated list of integers", file=sys.stderr)
        return 1
    runs = Path(os.environ.get("STN_RUNS", "runs"))
    folders = args.records or [
        Path("results/records") / f"{args.experiment}_{args.profile}",
        runs / args.experiment / args.profile,
    ]
    try:
        check_profile(args.experiment, args.profile)
        missing = missing_runs(args.experiment, seeds, folders)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.queue:
        print("\n".join(run.queue_line(args.profile) for run in missing))
        return 0
    print(
        f"{args.experiment}, profile {args.profile}, seeds {args.seeds}: {len(missing)} run(s) without a "
        f"finished record in {', '.join(map(str, folders))}"
    )
    if args.experiment == "coloc":
        embedding = coloc_embedding_dir(args.profile)
        print(f"  embedding e(), trained by the first job that needs it: {embedding} {run_state(embedding)}")
    for run in missing:
        resumes = "" if run.resumes_at is None else f"  # resumes at iteration {run.resumes_at:,}"
        print(f"  {run.command(args.profile)}{resumes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
