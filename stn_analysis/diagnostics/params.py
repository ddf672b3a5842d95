"""Print the parameter count and widths of every distorted-MNIST model: `stn-params`."""

from __future__ import annotations

import argparse

from stn_repro.models.mnist import parameter_table, width_range_budget

IMAGE_SIZES = {"r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--budget",
        default="400000",
        help="parameters per model, or width_ranges: each data set's budget of configs/budget/width_ranges.yaml",
    )
    args = parser.parse_args(argv)
    if args.budget == "width_ranges":
        rows = []
        for data, size in IMAGE_SIZES.items():
            chosen = width_range_budget(size, pool_after_transformer=data in ("rts", "tc"))
            outside = ", ".join(chosen.out_of_range) or "none"
            print(f"{data}: budget {chosen.params:,} (models outside the paper's width ranges: {outside})")
            rows += parameter_table({data: size}, param_budget=chosen.params)
    elif args.budget.isdigit():
        rows = parameter_table(IMAGE_SIZES, param_budget=int(args.budget))
    else:
        parser.error(f"--budget {args.budget!r}: give a whole number of parameters or width_ranges")
    print(
        f"{'data':5s} {'model':7s} {'transform':10s} {'widths':>10s} {'params':>9s} {'loc':>8s} {'vs budget':>9s}  in paper range"
    )
    for r in rows:
        print(
            f"{r['data']:5s} {r['kind']:7s} {r['transform'] or '-':10s} {r['widths']!s:>10s} "
            f"{r['param_count']:9,d} {r['localisation_params']:8,d} {100 * (r['param_count'] / r['param_budget'] - 1):+8.2f}%  "
            f"{'yes' if r['in_paper_width_range'] else 'no'}"
        )


if __name__ == "__main__":
    main()
