"""Print the parameter count and widths of every distorted-MNIST model: `python -m experiments.params`."""

from __future__ import annotations

import argparse

from stn_repro.models.mnist import parameter_table

IMAGE_SIZES = {"r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=400_000, help="parameter budget per model")
    args = parser.parse_args(argv)
    rows = parameter_table(IMAGE_SIZES, param_budget=args.budget)
    print(
        f"{'data':5s} {'model':7s} {'transform':10s} {'widths':>10s} {'params':>9s} {'loc':>8s} {'vs budget':>9s}  in paper range"
    )
    for r in rows:
        print(
            f"{r['data']:5s} {r['kind']:7s} {r['transform'] or '-':10s} {r['widths']!s:>10s} "
            f"{r['param_count']:9,d} {r['localisation_params']:8,d} {100 * (r['param_count'] / args.budget - 1):+8.2f}%  "
            f"{'yes' if r['in_paper_width_range'] else 'no'}"
        )


if __name__ == "__main__":
    main()
