"""Where a trained distorted-MNIST model's test errors fall against how strongly each test image was distorted.

The stored test sets keep every image's true parameters, so a cell whose error is far from the paper's can be
asked whether its extra errors come from the strongest distortions (the data) or from everywhere (the model
or its training). :func:`error_by_size` bins one run's wrong answers by
:func:`~stn_repro.data.distortions.distortion_size` and, for the sets whose digit is warped by one global map
(R, RTS, P), by the share of the digit's ink its image lost off the frame
(:func:`~stn_repro.data.distortions.ink_in_frame`, from the MNIST test digits the set was made from).
For P and E, whose distortions are independent Gaussian pixel offsets, :func:`error_at_other_std` estimates
the error the same model would make on a test set drawn with another offset std (the paper does not say
how its P digits were drawn beyond the spec's recipe). :func:`markdown` writes the bins of several runs.

From the command line: bin finished distorted-MNIST runs' test errors by how strongly each test image was distorted.

stn-error-by-distortion results/records/mnist_fast/p-cnn-none/seed1 [more run folders ...]
stn-error-by-distortion <runs> --edges 0,3,4,5,6,7,8 --out results/mnist_p_error_by_offset.md

R and RTS: the absolute rotation; P: the rms of the 4 corner offsets; E: the rms of the 16 control-point
offsets (px). Each run's `model.pt` is scored again on the stored test set built here (`make data-mnist`).
R, RTS and P runs are also binned by the share of the digit's ink lost off the frame; P and E runs get the
error re-weighted to test sets drawn with other offset stds (--offset-stds).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stn_analysis.records import error_on_set
from stn_repro.data.distortions import (
    DISTORTION_SIZE,
    E_CONTROL_STD_PX,
    FRAME_WARPS,
    P_4PX_CORNER_STD_PX,
    P_CORNER_STD_PX,
    distortion_size,
    ink_in_frame,
)
from stn_repro.data.files import DataError
from stn_repro.data.mnist import load_mnist
from stn_repro.data.sets import load_set_arrays, set_checksum
from stn_repro.io import atomic_write_text
from stn_repro.tasks.mnist import load_trained_mnist_model
from stn_repro.training.learners import wrong_answers
from stn_repro.training.records import RECORD_NAME, read_record

# The lower edges of the bins; the last bin is open above.
DEFAULT_EDGES = {
    "r": (0, 15, 30, 45, 60, 75),
    "rts": (0, 15, 30),
    "p": (0, 3, 4, 5, 6, 7, 8),
    "e": (0, 1, 1.25, 1.5, 1.75, 2),
    "p_4px": (0, 3, 4, 5, 6, 7, 8),
    "p_diagonal": (0, 3, 4, 5, 6, 7, 8),
    "p_digit_frame": (0, 3, 4, 5, 6, 7, 8),
}
INK_LOST_EDGES = (0, 2, 10, 25)  # % of the digit's ink off the frame
# The sets whose distortion is independent N(0, std) offsets in output pixels: the offsets' key, the std drawn
# and the stds to re-weigh the test set to by default.
GAUSSIAN_OFFSETS = {
    "p": ("corner_offsets_px", P_CORNER_STD_PX, (5.0, 4.5, 4.0, 3.5, 3.0)),
    "e": ("control_offsets_px", E_CONTROL_STD_PX, (1.5, 1.25, 1.0)),
    "p_4px": ("corner_offsets_px", P_4PX_CORNER_STD_PX, (4.0,)),
    "p_diagonal": ("corner_stretch_px", P_CORNER_STD_PX, (5.0, 4.0)),  # one N(0, 5 px) scalar per corner
    "p_digit_frame": ("corner_offsets_px", P_CORNER_STD_PX, (5.0, 4.0)),
}


def error_by_size(wrong: Tensor, size: Tensor, edges: Sequence[float]) -> list[dict[str, Any]]:
    """One row per bin ``[edges[k], edges[k+1])`` of ``size``, the last ``[edges[-1], inf)``: ``images``,
    ``share`` (% of the set), ``error`` (% of the bin's images wrong; ``None`` for an empty bin) and
    ``share_of_errors`` (% of all wrong answers). ``wrong [N]`` bool, ``size [N]``; sizes below
    ``edges[0]`` fall in no bin."""
    if wrong.shape != size.shape or wrong.dim() != 1:
        raise ValueError(f"wrong {tuple(wrong.shape)} and size {tuple(size.shape)} must be the same [N]")
    if len(edges) < 1 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"bin edges {list(edges)} must be increasing numbers")
    wrong, size = wrong.bool().cpu(), size.float().cpu()
    total, total_wrong = wrong.numel(), max(int(wrong.sum()), 1)
    rows = []
    for low, high in itertools.zip_longest(edges, edges[1:]):
        inside = (size >= low) & (size < high) if high is not None else size >= low
        count = int(inside.sum())
        rows.append(
            {
                "low": low,
                "high": high,
                "images": count,
                "share": 100.0 * count / total,
                "error": 100.0 * float(wrong[inside].float().mean()) if count else None,
                "share_of_errors": 100.0 * int((wrong & inside).sum()) / total_wrong,
            }
        )
    return rows


def error_at_other_std(wrong: Tensor, offsets: Tensor, drawn_std: float, std: float) -> tuple[float, float]:
    """The % error a model that got ``wrong [N]`` on a test set whose offsets ``[N, ...]`` were drawn i.i.d.
    N(0, ``drawn_std``) would make on one drawn with ``std`` instead, and the estimate's effective number of
    images. Importance weighting: each image counts by the ratio of its offsets' Gaussian densities under the
    two stds, ``exp(S / 2 drawn_std^2 - S / 2 std^2)`` up to a constant, ``S`` the sum of its squared offsets.
    Nothing else of the recipe changes (P's redraw of folded corners, 0.3% of draws, is ignored), and the model
    is the one trained on ``drawn_std``: one trained on the milder draw would likely do a little better."""
    if wrong.dim() != 1 or offsets.shape[0] != wrong.shape[0]:
        raise ValueError(f"wrong {tuple(wrong.shape)} and offsets {tuple(offsets.shape)} must share [N]")
    if drawn_std <= 0 or std <= 0:
        raise ValueError(f"offset stds must be positive, got {drawn_std} and {std}")
    squares = offsets.double().pow(2).flatten(1).sum(dim=1)
    log_weights = squares / (2 * drawn_std**2) - squares / (2 * std**2)
    weights = torch.exp(log_weights - log_weights.max())
    error = 100.0 * float((weights * wrong.double()).sum() / weights.sum())
    effective = float(weights.sum() ** 2 / weights.pow(2).sum())
    return error, effective


def run_breakdown(
    run_dir: Path,
    edges: Sequence[float] | None = None,
    data_dir: Path | None = None,
    offset_stds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A finished run's test errors binned by distortion size, scored again from its ``model.pt`` on the
    stored test set built here. ``recorded_error`` is the record's score on that set and ``recorded_how``
    says whose (``"recorded"``: the run's own; ``"rescored"``: a later score from the same weights), or
    ``None`` with the run's own score when neither was made on this set (see :func:`error_on_set`)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir / RECORD_NAME)
    set_name = record["data"]
    if set_name not in DISTORTION_SIZE:
        raise ValueError(
            f"{run_dir} ran on {set_name!r}, which has no distortion size (known: {', '.join(DISTORTION_SIZE)})"
        )
    arrays = load_set_arrays(set_name, "test", data_dir)
    labels = arrays["labels"].long()
    wrong = wrong_answers(load_trained_mnist_model(run_dir), arrays["images"], labels)
    scored = error_on_set(record, set_checksum(arrays["images"], labels))
    ink_bins = None
    if set_name in FRAME_WARPS:
        lost = 100.0 * (1.0 - ink_in_frame(set_name, arrays, _test_digits(labels, data_dir)))
        ink_bins = error_by_size(wrong, lost, INK_LOST_EDGES)
    reweighted = None
    if set_name in GAUSSIAN_OFFSETS:
        key, drawn, default_stds = GAUSSIAN_OFFSETS[set_name]
        reweighted = [
            (std, *error_at_other_std(wrong, arrays[key], drawn, std))
            for std in (offset_stds or default_stds)
        ]
    return {
        "run": str(run_dir),
        "cell": record["cell"],
        "seed": record["seed"],
        "profile": record["profile"],
        "iterations": record["iterations"],
        "commit": record.get("commit"),
        "recorded_error": scored[0] if scored else record["test_error"],
        "recorded_how": scored[1] if scored else None,
        "error": 100.0 * float(wrong.float().mean()),
        "set": set_name,
        "size_name": DISTORTION_SIZE[set_name],
        "bins": error_by_size(wrong, distortion_size(set_name, arrays), edges or DEFAULT_EDGES[set_name]),
        "ink_bins": ink_bins,
        "other_stds": reweighted,
        "drawn_std": GAUSSIAN_OFFSETS[set_name][1] if set_name in GAUSSIAN_OFFSETS else None,
    }


def _test_digits(labels: Tensor, data_dir: Path | None) -> Tensor:
    """The MNIST test digits ``[N, 1, 28, 28]`` in [0, 1] a stored test set was made from, image by image."""
    mnist = load_mnist(data_dir)
    if not torch.equal(mnist.test_labels.long(), labels):
        raise ValueError(
            "the stored test set's labels do not follow the MNIST test digits in order, so its images cannot be "
            "matched to their digits; fix: run `make data-mnist` (it rebuilds outdated sets)"
        )
    return mnist.test_images.unsqueeze(1).float() / 255.0


def markdown(breakdowns: list[dict[str, Any]], command: str) -> str:
    """The breakdowns as Markdown: one table per run, with the run's provenance and ``command``."""
    lines = ["# Test error by distortion size", ""]
    for b in breakdowns:
        check = {
            "recorded": "",
            "rescored": ", rescored from its weights on this set by `stn-rescore`",
            None: " (its record was scored on a test set that differs from today's)",
        }[b["recorded_how"]]
        lines += [
            f"## {b['cell']} seed {b['seed']}, profile `{b['profile']}`",
            "",
            f"{b['iterations']:,} iterations at commit `{(b['commit'] or '?')[:7]}`; test error {b['error']:.2f}% "
            f"(recorded {b['recorded_error']:.2f}%{check}). Bins of the {b['size_name']}.",
            "",
            f"| {b['size_name']} | images | % of the set | % error | % of the errors |",
            "|---|---|---|---|---|",
        ]
        lines += _rows(b["bins"])
        if b.get("ink_bins"):
            lines += [
                "",
                "The same errors by the share of the digit's ink the image lost off the frame (from the MNIST "
                "test digit it was made from).",
                "",
                "| % of the ink off the frame | images | % of the set | % error | % of the errors |",
                "|---|---|---|---|---|",
                *_rows(b["ink_bins"]),
            ]
        if b.get("other_stds"):
            lines += [
                "",
                f"The error this model would make on a test set whose offsets were drawn with another std than "
                f"the {b['drawn_std']:g} px drawn here (the same images, weighted by the ratio of the two "
                "Gaussian densities of their offsets; the model is the one trained on this draw).",
                "",
                "| offset std (px) | % error | effective images |",
                "|---|---|---|",
                *(
                    f"| {std:g} | {error:.2f} | {effective:,.0f} |"
                    for std, error, effective in b["other_stds"]
                ),
            ]
        lines.append("")
    lines += [f"Made by `{command}` from the runs' `model.pt` and the stored test sets.", ""]
    return "\n".join(lines)


def _rows(bins: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in bins:
        span = f"[{row['low']:g}, {row['high']:g})" if row["high"] is not None else f">= {row['low']:g}"
        error = "-" if row["error"] is None else f"{row['error']:.2f}"
        lines.append(
            f"| {span} | {row['images']:,} | {row['share']:.1f} | {error} | {row['share_of_errors']:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding record.json and model.pt")
    parser.add_argument("--edges", default=None, help="lower bin edges, comma-separated (default: per set)")
    parser.add_argument(
        "--offset-stds",
        default=None,
        help="P/E: offset stds (px) to re-weigh to, comma-separated (default: per set)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST sets (default $STN_DATA or data/)")
    args = parser.parse_args(argv)
    try:
        edges = None if args.edges is None else [float(e) for e in args.edges.split(",")]
    except ValueError:
        parser.error(f"--edges {args.edges!r}: give comma-separated numbers, e.g. --edges 0,3,4,5,6")
    try:
        stds = None if args.offset_stds is None else [float(e) for e in args.offset_stds.split(",")]
    except ValueError:
        parser.error(
            f"--offset-stds {args.offset_stds!r}: give comma-separated numbers, e.g. --offset-stds 5,4,3"
        )
    try:
        breakdowns = [run_breakdown(run, edges, args.data_dir, stds) for run in args.runs]
    except (FileNotFoundError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    text = markdown(breakdowns, f"stn-error-by-distortion {argv_text}")
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
