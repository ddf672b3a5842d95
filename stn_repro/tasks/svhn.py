"""SVHN multi-digit cells (a set x a model x a seed): data, model, and what the record says.

Everything else (resume, lock, weights, record, tracker, pictures) is :func:`stn_repro.runs.run_seed`'s.
The models predict five digit positions (``"no digit"`` padding as an 11th class) and are scored on sequence
error (:data:`~stn_repro.training.objectives.SEQUENCE`): an image is right only when every position is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn_repro.data.sets import set_checksum
from stn_repro.data.svhn.crops import center_crop
from stn_repro.data.svhn.stored import SVHN_VERSION, load_svhn_set, read_svhn_attrs, svhn_set_path
from stn_repro.data.svhn.stream import SvhnStream
from stn_repro.data.synthetic.svhn import STAND_IN_ATTR, check_stand_in_version
from stn_repro.models.svhn import SVHN_MODEL_KINDS, build_svhn_model, transformer_outputs
from stn_repro.paper import svhn_paper_error
from stn_repro.tracking import Tracker
from stn_repro.training.objectives import SEQUENCE
from stn_repro.training.runs import PreparedRun, run_seed
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.weights import load_trained
from stn_repro.transformers import Affine
from stn_repro.viz import transformation_figure

SVHN_SIZES = (64, 128)
NUM_PICTURES = 8


@dataclass
class SvhnSpec:
    """Everything that defines one SVHN run, as explicit values."""

    data: str  # the set's name in tables and run folders: svhn64, synthetic-svhn128, ...
    set_name: str  # the stored sets' name (svhn, synthetic-svhn): data/svhn_sets/<set_name>_<size>px_*.h5
    size: int
    model: str
    seed: int
    batch_size: int
    profile: str
    reduced_budget: bool
    synthetic: bool = False
    crop: int | None = 54  # random training crops (Goodfellow); evaluation reads the central crop
    train_splits: Sequence[str] = ("train",)
    evaluate_val: bool = True
    device: str = "auto"
    data_dir: Path | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # width, fc_layers, dropout
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def __post_init__(self) -> None:
        if self.model not in SVHN_MODEL_KINDS:
            raise ValueError(f"unknown SVHN model {self.model!r}; known: {', '.join(SVHN_MODEL_KINDS)}")
        if self.size not in SVHN_SIZES:
            raise ValueError(f"SVHN size must be one of {SVHN_SIZES}, got {self.size!r}")
        if self.crop is not None and not 9 <= self.crop <= self.size:
            raise ValueError(f"crop={self.crop!r} must lie in [9, {self.size}] (or be null: no crops)")
        unknown = set(self.train_splits) - {"train", "extra"}
        if not self.train_splits or unknown:
            raise ValueError(f"train_splits={list(self.train_splits)!r}: use [train] or [train, extra]")

    @property
    def cell(self) -> str:
        return f"{self.data}-{self.model}"

    @property
    def input_size(self) -> int:
        return self.crop or self.size


@dataclass
class SvhnData:
    """A cell's data, the same for every seed: training images, evaluation sets, picture inputs."""

    train_images: Tensor  # uint8 [N, 3, S, S] (CPU)
    train_labels: Tensor  # int64 [N, 5]
    test_images: Tensor  # uint8, centrally cropped to the model's input (CPU)
    test_labels: Tensor
    test_checksum: str  # of the stored test set, as built
    stand_in_version: int | None  # the synthetic stand-in's version the sets were made from; None: real SVHN
    eval_sets: dict[str, tuple[Tensor, Tensor]]  # name -> (images, labels) on the training device
    picture_inputs: Tensor  # the first test images, float in [0, 1] on the training device


def load_svhn_data(spec: SvhnSpec, device: torch.device) -> SvhnData:
    """Load the stored sets of ``spec`` (verified; a missing one, or a synthetic one of another stand-in
    version than this code draws, raises ``DataError`` naming the make target)."""
    stand_in = {}

    def load(split: str) -> dict[str, Tensor]:
        data = load_svhn_set(spec.set_name, spec.size, split, spec.data_dir)
        if spec.synthetic:
            attrs = read_svhn_attrs(spec.set_name, spec.size, split, spec.data_dir)
            path = svhn_set_path(spec.set_name, spec.size, split, spec.data_dir)
            stand_in[split] = check_stand_in_version(attrs, path)
        return data

    parts = [load(split) for split in spec.train_splits]
    train_images = torch.cat([p["images"] for p in parts]) if len(parts) > 1 else parts[0]["images"]
    train_labels = torch.cat([p["labels"] for p in parts]) if len(parts) > 1 else parts[0]["labels"]
    test = load("test")
    test_images = center_crop(test["images"], spec.crop).contiguous()
    test_labels = test["labels"].long()
    eval_sets = {"test": (test_images.to(device), test_labels.to(device))}
    if spec.evaluate_val:
        val = load("val")
        eval_sets["val"] = (
            center_crop(val["images"], spec.crop).contiguous().to(device),
            val["labels"].long().to(device),
        )
    return SvhnData(
        train_images=train_images,
        train_labels=train_labels.long(),
        test_images=test_images,
        test_labels=test_labels,
        test_checksum=set_checksum(test["images"], test["labels"]),
        stand_in_version=stand_in.get("test"),
        eval_sets=eval_sets,
        picture_inputs=test_images[:NUM_PICTURES].to(device).float() / 255.0,
    )


def prepare_svhn_seed(spec: SvhnSpec, data: SvhnData, device: torch.device) -> PreparedRun:
    """The seeded stream and model (built after ``torch.manual_seed(spec.seed)``) of one seed, with its record."""
    stream = SvhnStream(
        data.train_images, data.train_labels, spec.batch_size, seed=spec.seed, device=device, crop=spec.crop
    )
    torch.manual_seed(spec.seed)
    in_shape = (3, spec.input_size, spec.input_size)
    model, info = build_svhn_model(spec.model, in_shape, **spec.model_options)
    model.to(device)
    synthetic = " | SYNTHETIC stand-in data" if spec.synthetic else ""
    return PreparedRun(
        cell=spec.cell,
        seed=spec.seed,
        model=model,
        stream=stream,
        eval_sets=data.eval_sets,
        batch_size=spec.batch_size,
        param_count=info.param_count,
        description=(
            f"{spec.cell} seed {spec.seed} | {info.param_count:,} parameters (width {info.width}, "
            f"localisation {info.localisation_params:,}) | {len(data.train_labels):,} training images | "
            f"{device} | profile {spec.profile}{synthetic}"
        ),
        record={
            "experiment": "svhn",
            "data": spec.data,
            "model": spec.model,
            "transform": None if spec.model == "cnn" else "affine",
            "size": spec.size,
            "synthetic": spec.synthetic,
            # The paper's number on real SVHN: beside a synthetic run it is a reference, not a target.
            "paper_error": svhn_paper_error(spec.model, spec.size),
            "model_info": asdict(info),
            "train_images": len(data.train_labels),
            "train_splits": list(spec.train_splits),
            "crop": spec.crop,
            "test_set": {
                "source": spec.set_name,
                "size": int(data.test_labels.shape[0]),
                "sha256": data.test_checksum,
                "generator_version": SVHN_VERSION,
                # The synthetic stand-in's version (records without it: version 1); absent for real SVHN.
                **({STAND_IN_ATTR: data.stand_in_version} if spec.synthetic else {}),
            },
        },
        weights={"kind": spec.model, "input_shape": list(in_shape), "model_options": spec.model_options},
        objective=SEQUENCE,
        speed=spec.speed,
        figure=(None if spec.model == "cnn" else lambda: svhn_picture(model, data.picture_inputs)),
    )


def svhn_picture(model: nn.Module, inputs: Tensor):
    """What the transformer(s) look at: each input with the sampling grid of the composed affine map of
    all its transformers (the paper's Table 2, right, for ST-CNN Multi), beside the input warped by it."""
    outputs, params = transformer_outputs(model, inputs)
    return transformation_figure(inputs, outputs, params, Affine())


def run_svhn_seed(
    spec: SvhnSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate one seed of an SVHN cell in ``run_dir`` (resuming); return its record."""
    return run_seed(
        spec,
        lambda device: prepare_svhn_seed(spec, load_svhn_data(spec, device), device),
        settings,
        run_dir,
        config=config,
        make_tracker=make_tracker,
        log=log,
    )


def load_trained_svhn_model(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """The model a finished SVHN run saved (its ``model.pt`` or run folder), rebuilt and in eval mode."""
    return load_trained(
        path,
        lambda state: build_svhn_model(state["kind"], tuple(state["input_shape"]), **state["model_options"])[
            0
        ],
        device,
    )
