"""MNIST addition cells (a model x a transform x a seed, spec Sect. 3 / Table 4): data, model, record.

Everything else (resume, lock, weights, record, tracker, pictures) is :func:`stn_repro.runs.run_seed`'s.
Training pairs are drawn fresh every batch from the 60k training digits (:class:`AdditionStream`); every
model is scored on the stored fixed ``addition`` test set (``make data-mnist``: the 10k test digits, each
paired with another, both RTS-distorted), or with ``data_source="synthetic"`` on one generated from
:func:`~stn_repro.data.synthetic_mnist` (smoke tests). With ``hold_out_validation`` (the ``fast``
profile) the stream pairs only the 55k digits outside :func:`~stn_repro.data.validation_indices`, and the
stored ``addition`` ``val`` set (pairs of the 5k validation digits) is scored as eval set ``"val"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn_repro.data import (
    MnistArrays,
    generate_addition_set,
    load_mnist,
    load_set,
    summarise_test_set,
    synthetic_mnist,
    train_indices,
)
from stn_repro.data.addition import AdditionStream
from stn_repro.data.files import DataError
from stn_repro.models.addition import (
    ADDITION_INPUT_SHAPE,
    ADDITION_MODEL_KINDS,
    SPATIAL_KINDS,
    build_addition_model,
    transformer_views,
    transformers_of,
)
from stn_repro.paper import addition_paper_error, addition_secondary_error
from stn_repro.tracking import Tracker
from stn_repro.training.runs import PreparedRun, run_seed
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.weights import classifier_weights, load_trained, rebuild_classifier
from stn_repro.viz import parallel_transformation_figure

SET_NAME = "addition"  # the stored test set's name, the record's data and the cells' prefix
SYNTHETIC_TEST_SEED = 10_000  # the synthetic smoke-test set's seed (the real set is built by make data-mnist)
NUM_PICTURES = 4
TRANSFORMS = ("affine", "projective", "tps")


@dataclass
class AdditionSpec:
    """Everything that defines one MNIST addition run, as explicit values.

    ``transform`` is the ST models' family; for ``fcn`` and ``cnn`` it is ignored (set to ``None``), so a
    plain model runs with whatever transformer config is about.
    """

    model: str
    transform: str | None
    seed: int
    batch_size: int
    profile: str
    reduced_budget: bool
    device: str = "auto"
    data_source: str = "mnist"  # or "synthetic"
    data_dir: Path | None = None
    # Train on the 55k digits outside the validation split and score the stored `addition` val set as "val".
    hold_out_validation: bool = False
    pool_after_transformer: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)  # param_budget, localisation_hidden, ...
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def __post_init__(self) -> None:
        if self.model not in ADDITION_MODEL_KINDS:
            raise ValueError(
                f"unknown addition model {self.model!r}; known: {', '.join(ADDITION_MODEL_KINDS)}"
            )
        if self.transform in ("none", ""):
            self.transform = None
        if self.model not in SPATIAL_KINDS:
            self.transform = None  # a plain model has no transformer, whatever the config says
        elif self.transform not in TRANSFORMS:
            raise ValueError(
                f"model {self.model} needs a transformer: {', '.join(TRANSFORMS)} "
                f"(got {self.transform or 'none'!r})"
            )
        if self.data_source not in ("mnist", "synthetic"):
            raise ValueError(f"unknown data source {self.data_source!r}; known: mnist, synthetic")
        if self.hold_out_validation and self.data_source == "synthetic":
            raise ValueError(
                "hold_out_validation needs the real MNIST sets (data.source=mnist); for synthetic digits "
                "set data.hold_out_validation=false (the fast profile turns it on)"
            )

    @property
    def cell(self) -> str:
        return f"{SET_NAME}-{self.model}-{self.transform or 'none'}"


@dataclass
class AdditionData:
    """The data of an addition cell, the same for every seed."""

    train_images: Tensor  # uint8 [60000 or 55000, 28, 28]: the digits the training stream pairs (CPU)
    train_labels: Tensor
    test_images: Tensor  # uint8 [N, 2, 42, 42] (CPU)
    test_labels: Tensor  # the sums
    eval_sets: dict[str, tuple[Tensor, Tensor]]  # name -> (images, labels) on the training device
    picture_inputs: Tensor  # the first test pairs, float in [0, 1] on the training device
    picture_labels: Tensor


def load_addition_data(spec: AdditionSpec, device: torch.device) -> AdditionData:
    """The training digits and the fixed test set (stored; generated for ``data_source="synthetic"``), and
    with ``spec.hold_out_validation`` the stored val set, the training digits then without the validation
    digits."""
    if spec.data_source == "synthetic":
        digits, test_images, test_labels = synthetic_addition_data()
    else:
        digits = load_mnist(spec.data_dir)
        test_images, test_labels = load_set(SET_NAME, "test", spec.data_dir)
    eval_sets = {"test": (test_images.to(device), test_labels.to(device))}
    train_images, train_labels = digits.train_images, digits.train_labels
    if spec.hold_out_validation:  # only with data_source="mnist" (AdditionSpec checks)
        try:
            val_images, val_labels = load_set(SET_NAME, "val", spec.data_dir)
        except DataError as error:
            raise DataError(
                "hold_out_validation needs the stored addition val set, which data built before it was "
                f"added lacks (`make data-mnist` adds it and keeps the other sets): {error}"
            ) from None
        eval_sets["val"] = (val_images.to(device), val_labels.to(device))
        keep = train_indices(hold_out_validation=True)
        train_images, train_labels = train_images[keep], train_labels[keep]
    return AdditionData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        eval_sets=eval_sets,
        picture_inputs=test_images[:NUM_PICTURES].to(device).float() / 255.0,
        picture_labels=test_labels[:NUM_PICTURES],
    )


@functools.cache
def synthetic_addition_data() -> tuple[MnistArrays, Tensor, Tensor]:
    """The synthetic digits and the addition test set generated from them (made once per process; read-only)."""
    digits = synthetic_mnist(seed=0)
    generated = generate_addition_set(digits.test_images, digits.test_labels, SYNTHETIC_TEST_SEED)
    return digits, generated["images"], generated["labels"]


def prepare_addition_seed(spec: AdditionSpec, data: AdditionData, device: torch.device) -> PreparedRun:
    """The seeded stream and model (built after ``torch.manual_seed(spec.seed)``) of one seed, with its record."""
    stream = AdditionStream(
        data.train_images, data.train_labels, spec.batch_size, seed=spec.seed, device=device
    )
    torch.manual_seed(spec.seed)
    model, info = build_addition_model(
        spec.model,
        ADDITION_INPUT_SHAPE,
        transform=spec.transform,
        pool_after_transformer=spec.pool_after_transformer,
        **spec.model_options,
    )
    model.to(device)
    synthetic = " | SYNTHETIC digits" if spec.data_source == "synthetic" else ""
    return PreparedRun(
        cell=spec.cell,
        seed=spec.seed,
        model=model,
        stream=stream,
        eval_sets=data.eval_sets,
        batch_size=spec.batch_size,
        param_count=info.param_count,
        description=(
            f"{spec.cell} seed {spec.seed} | {info.param_count:,} parameters (widths {info.widths}, "
            f"localisation {info.localisation_params:,}) | {device} | profile {spec.profile}{synthetic}"
        ),
        record={
            "experiment": "addition",
            "data": SET_NAME,
            "model": spec.model,
            "transform": spec.transform,
            "paper_error": addition_paper_error(spec.model, spec.transform),
            "paper_error_secondary": addition_secondary_error(spec.model, spec.transform),
            "synthetic": spec.data_source == "synthetic",
            "pool_after_transformer": spec.pool_after_transformer,
            "hold_out_validation": spec.hold_out_validation,
            "train_digits": len(data.train_labels),
            "model_info": asdict(info),
            "test_set": summarise_test_set(spec.data_source, data.test_images, data.test_labels),
        },
        weights=classifier_weights(
            spec.model, spec.transform, ADDITION_INPUT_SHAPE, spec.pool_after_transformer, spec.model_options
        ),
        speed=spec.speed,
        figure=(
            None
            if spec.model not in SPATIAL_KINDS
            else lambda: addition_picture(model, data.picture_inputs, data.picture_labels)
        ),
    )


def addition_picture(model: nn.Module, inputs: Tensor, labels: Tensor | None = None):
    """Both input channels of each pair with every transformer's sampling grid, beside each transformer's
    2-channel output (the paper's Table 4, right); ``None`` for a model without a transformer."""
    transformers = transformers_of(model)
    if not transformers:
        return None
    was_training = model.training
    model.eval()
    try:
        views = transformer_views(model, inputs)
    finally:
        model.train(was_training)
    titles = None if labels is None else [f"sum {int(y)}" for y in labels]
    return parallel_transformation_figure(inputs, views, transformers[0].family, titles)


def run_addition_seed(
    spec: AdditionSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate one seed of an addition cell in ``run_dir`` (resuming); return its record."""
    return run_seed(
        spec,
        lambda device: prepare_addition_seed(spec, load_addition_data(spec, device), device),
        settings,
        run_dir,
        config=config,
        make_tracker=make_tracker,
        log=log,
    )


def load_trained_addition_model(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """The model a finished addition run saved (its ``model.pt`` or run folder), rebuilt and in eval mode."""
    return load_trained(path, rebuild_classifier(build_addition_model), device)
