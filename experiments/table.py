"""Write the distorted-MNIST tables (CSV + Markdown) against the paper from run records.

python -m experiments.table                       # every profile found under runs/mnist
python -m experiments.table --profile quick --wandb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn_repro.tables import CSV_COLUMNS, aggregate, collect_records, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/mnist"), help="folder searched for record.json"
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="where the tables go")
    parser.add_argument("--profile", help="only this trainer profile (paper, quick, smoke)")
    parser.add_argument("--wandb", action="store_true", help="also log each table as a wandb.Table")
    parser.add_argument("--wandb-mode", default="offline", help="W&B mode for --wandb (offline, online)")
    args = parser.parse_args(argv)

    records = collect_records(args.runs)
    if not records:
        print(
            f"no finished runs under {args.runs}: run `make reproduce-mnist` (or experiments.mnist) first",
            file=sys.stderr,
        )
        return 1
    rows = aggregate(records)
    profiles = [args.profile] if args.profile else sorted({r["profile"] for r in rows})
    for profile in profiles:
        csv_path, md_path = write_tables(rows, args.out, profile)
        print(f"{profile}: {csv_path} and {md_path}")
        print(md_path.read_text())
        if args.wandb:
            from stn_repro.tracking import WandbTracker

            tracker = WandbTracker(
                project="stn-repro",
                name=f"table1-{profile}",
                group=f"mnist-{profile}",
                config={"profile": profile, "runs": str(args.runs)},
                dir=args.out / "wandb",
                mode=args.wandb_mode,
                tags=["table"],
            )
            table_rows = [[r[c] for c in CSV_COLUMNS] for r in rows if r["profile"] == profile]
            tracker.log_table(f"table1_{profile}", CSV_COLUMNS, table_rows)
            tracker.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
