"""Sample sheets: a PNG grid of generated samples per set, each captioned with its label and true params.

For checking by eye that the generators do what the spec describes (rotated digits, RTS in a 42 px canvas,
perspective, elastic, cluttered 60 px, addition pairs, co-localisation with its box), and the synthetic
SVHN stand-in's crops as the importer cuts them, with the digits' true ink (:func:`write_svhn_sheets`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torch import Tensor

from .distortions import DISTORTED_SET_NAMES
from .mnist import MnistArrays
from .sets import (
    generate_addition_set,
    generate_colocalisation_set,
    generate_set,
    train_indices,
)
from .svhn.digit_struct import DIGIT_STRUCT, read_digit_struct
from .svhn.importer import import_svhn
from .svhn.stored import load_svhn_set
from .synthetic.svhn import (
    SYNTHETIC_NAME,
    SYNTHETIC_VERSION,
    ink_in_crop,
    make_synthetic_svhn_tree,
    read_truth,
)

SHEET_NAMES = (*DISTORTED_SET_NAMES, "addition", "coloc", "coloc_tc")


def write_sample_sheets(
    mnist: MnistArrays, out_dir: Path, seed: int = 0, rows: int = 8, cols: int = 8
) -> list[Path]:
    """Write ``<out_dir>/<set>.png`` for every name in :data:`SHEET_NAMES` from ``mnist``'s test digits.

    Uses the stored-set generators (``generate_set`` and friends) on the first ``rows * cols`` test
    digits, so the sheets show exactly what the stored sets hold, for the given ``seed``. Clutter comes from
    the training digits outside the validation split, as in the stored sets.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = rows * cols
    images, labels = mnist.test_images[:count], mnist.test_labels[:count]
    num_train = len(mnist.train_images)
    clutter = mnist.train_images[
        train_indices(True, num_train=num_train, num_validation=min(5000, max(1, num_train // 12)))
    ]
    paths = []
    for name in SHEET_NAMES:
        if name in DISTORTED_SET_NAMES:
            data = generate_set(name, images, labels, seed, clutter_source=clutter)
        elif name == "addition":
            data = generate_addition_set(images, labels, seed)
        else:
            data = generate_colocalisation_set(images, labels, seed, clutter if name == "coloc_tc" else None)
        path = out_dir / f"{name}.png"
        _draw_sheet(name, data, rows, cols, path)
        paths.append(path)
    return paths


def _draw_sheet(name: str, data: dict[str, Tensor], rows: int, cols: int, path: Path) -> None:
    images = data["images"].float() / 255.0
    size = images.shape[-1]
    width = 2 if name == "addition" else 1  # the addition cells show both channels side by side
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols * width, 1.4 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= len(images):
            continue
        if name == "addition":
            gap = torch.full((size, 2), 0.5)  # a grey bar separates the two channels
            picture = torch.cat([images[index, 0], gap, images[index, 1]], dim=1)
        else:
            picture = images[index, 0]
        ax.imshow(picture.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        if name.startswith("coloc"):
            x0, y0, x1, y1 = data["boxes"][index].tolist()
            # imshow puts pixel i's centre at i, so the pixel-edge box [x0, x1] is drawn from x0 - 0.5.
            ax.add_patch(
                Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", lw=0.8)
            )
        ax.set_title(_caption(name, data, index), fontsize=5, pad=1.5)
    fig.suptitle(_TITLES[name], fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: stable files
    plt.close(fig)


_TITLES = {
    "r": "R: rotated U[-90, 90] deg, 28x28 | label | angle",
    "rts": "RTS: rotated U[-45, 45], scaled U[0.7, 1.2], placed in 42x42 | label | angle, scale, centre (px)",
    "p": "P: scaled U[0.75, 1], corners moved N(0, 5 px), projective, 28x28 | label | scale, rms corner offset (px)",
    "p_4px": "P 4 px (study set, NOT the paper's): corners moved N(0, 4 px), else as P | label | scale, rms corner "
    "offset (px)",
    "p_diagonal": "P diagonal (study set, NOT the paper's): each corner stretched N(0, 5 px) along its diagonal | "
    "label | scale, rms corner offset (px)",
    "p_digit_frame": "P digit frame (study set, NOT the paper's): offsets N(0, 5 px) not divided by the scale | "
    "label | scale, rms corner offset (digit px)",
    "e": "E: scaled U[0.75, 1], 16 TPS control points moved N(0, 1.5 px), 28x28 | label | scale, rms offset (px)",
    "tc": "TC: translated in 60x60, six 6x6 clutter patches | label | digit centre (px)",
    "addition": "Addition: two RTS channels (42x42 each) | digits and their sum (19 classes)",
    "coloc": "Co-localisation: digit at a random place in 84x84, true box in red | label | box x0,y0",
    "coloc_tc": "Co-localisation TC: 84x84 with sixteen 6x6 clutter patches, true box in red | label | box x0,y0",
}


def _caption(name: str, data: dict[str, Tensor], i: int) -> str:
    label = int(data["labels"][i])
    if name == "r":
        return f"{label} | {data['angle_deg'][i]:+.0f}°"
    if name == "rts":
        x, y = data["centre_px"][i].tolist()
        return f"{label} | {data['angle_deg'][i]:+.0f}° s{data['scale'][i]:.2f} ({x:.0f},{y:.0f})"
    if name.startswith("p"):
        rms = data["corner_offsets_px"][i].pow(2).mean().sqrt()
        return f"{label} | s{data['scale'][i]:.2f} off {rms:.1f}"
    if name == "e":
        rms = data["control_offsets_px"][i].pow(2).mean().sqrt()
        return f"{label} | s{data['scale'][i]:.2f} off {rms:.1f}"
    if name == "tc":
        x, y = data["centre_px"][i].tolist()
        return f"{label} | ({x:.0f},{y:.0f})"
    if name == "addition":
        a, b = data["digit_labels"][i].tolist()
        return f"{a}+{b}={label}"
    x0, y0 = data["boxes"][i, :2].tolist()
    return f"{label} | {x0:.0f},{y0:.0f}"


SVHN_SHEET_SIZES = (64, 128)


def write_svhn_sheets(mnist: MnistArrays, out_dir: Path, rows: int = 6, cols: int = 8) -> list[Path]:
    """Write ``<out_dir>/synthetic_svhn<size>.png`` for 64 and 128 px: the first ``rows * cols`` test
    images of the default synthetic SVHN stand-in (its seed; drawn from ``mnist``'s test digits), as the
    real importer crops them, each with the union of its digits' true ink boxes in red (``truth.json``)
    and its label and style."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = rows * cols
    quiet = lambda _line: None  # noqa: E731
    paths = []
    with tempfile.TemporaryDirectory() as scratch:
        tree = make_synthetic_svhn_tree(
            Path(scratch) / SYNTHETIC_NAME, mnist.test_images, mnist.test_labels, {"test": count}, log=quiet
        )
        import_svhn(
            tree,
            Path(scratch),
            splits=("test",),
            sizes=SVHN_SHEET_SIZES,
            name=SYNTHETIC_NAME,
            expect_official_counts=False,
            log=quiet,
        )
        records = read_digit_struct(tree / "test" / DIGIT_STRUCT)
        truth = read_truth(tree / "test")
        for size in SVHN_SHEET_SIZES:
            images = load_svhn_set(SYNTHETIC_NAME, size, "test", Path(scratch))["images"]
            fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.4 * rows), squeeze=False)
            for index, ax in enumerate(axes.flat):
                ax.set_axis_off()
                ax.imshow(images[index].permute(1, 2, 0).numpy(), interpolation="nearest")
                cx, cy, w, h = ink_in_crop(records[index].boxes, truth[index]["ink_boxes"], size) * size
                # imshow puts pixel i's centre at i: a box of pixel edges [x0, x1] starts at x0 - 0.5.
                ax.add_patch(
                    Rectangle((cx - w / 2 - 0.5, cy - h / 2 - 0.5), w, h, fill=False, edgecolor="red", lw=0.6)
                )
                params = truth[index]["params"]
                label = "".join(map(str, params["labels"]))
                ax.set_title(f"{label} | {params['style']}", fontsize=5, pad=1.5)
            fig.suptitle(
                f"Synthetic SVHN stand-in v{SYNTHETIC_VERSION}, {size} px crops (the importer's): first {count} "
                "test images | red: the digits' true ink | label | style",
                fontsize=8,
            )
            fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.97))
            path = out_dir / f"synthetic_svhn{size}.png"
            fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: stable files
            plt.close(fig)
            paths.append(path)
    return paths
