"""One distorted-MNIST cell (a data set x a model x a transform x a seed): data, model, training, record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stn_repro.data import (
    GENERATOR_VERSION,
    DistortedStream,
    FixedTrainingSet,
    generate_set,
    load_mnist,
    load_set,
    set_checksum,
    synthetic_mnist,
    train_indices,
)
from stn_repro.models.mnist import build_mnist_model, transformed_batch
from stn_repro.paper import paper_error
from stn_repro.tracking import Tracker
from stn_repro.training.loop import SpeedSettings, TrainSettings, train
from stn_repro.training.records import RECORD_NAME, provenance, read_record, write_record
from stn_repro.viz import save_figure, transformation_figure

SYNTHETIC_TEST_SEED = (
    10_000  # the synthetic smoke-test set's distortion seed (real sets are built by make data-mnist)
)


@dataclass
class CellSpec:
    """Everything that defines one run, as explicit values."""

    data: str
    model: str
    transform: str | None
    seed: int
    batch_size: int
    profile: str
    reduced_budget: bool
    device: str = "auto"
    data_source: str = "mnist"  # or "synthetic"
    data_dir: Path | None = None
    train_mode: str = "on_the_fly"  # or "fixed"
    hold_out_validation: bool = False
    pool_after_transformer: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    speed: SpeedSettings = field(default_factory=SpeedSettings)  # how steps run, not what is trained

    @property
    def cell(self) -> str:
        return f"{self.data}-{self.model}-{self.transform or 'none'}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was asked for but CUDA is not available; use trainer.device=cpu or auto"
        )
    return device


def run_cell(
    spec: CellSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate one cell in ``run_dir`` (resuming if it holds a checkpoint); return its record.

    A finished run (its ``record.json`` says so) is not run again: the record is returned as it is.
    """
    run_dir = Path(run_dir)
    record_path = run_dir / RECORD_NAME
    if record_path.exists():
        record = read_record(record_path)
        if record.get("finished"):
            log(
                f"{spec.cell} seed {spec.seed}: already finished ({record_path}); test error {record['test_error']:.2f}%"
            )
            return record
    tracker = tracker or Tracker()
    device = resolve_device(spec.device)

    if spec.data_source == "synthetic":
        digits = synthetic_mnist(seed=0)
        generated = generate_set(
            spec.data,
            digits.test_images,
            digits.test_labels,
            SYNTHETIC_TEST_SEED,
            clutter_source=digits.train_images,
        )
        test_images, test_labels = generated["images"], generated["labels"]
    elif spec.data_source == "mnist":
        digits = load_mnist(spec.data_dir)
        test_images, test_labels = load_set(spec.data, "test", spec.data_dir)
    else:
        raise ValueError(f"unknown data source {spec.data_source!r}; known: mnist, synthetic")
    eval_sets = {"test": (test_images.to(device), test_labels.to(device))}
    if spec.hold_out_validation:
        if spec.data_source == "synthetic":
            raise ValueError("hold_out_validation needs the real MNIST sets (data.source=mnist)")
        val_images, val_labels = load_set(spec.data, "val", spec.data_dir)
        eval_sets["val"] = (val_images.to(device), val_labels.to(device))
        keep = train_indices(hold_out_validation=True)
        train_images, train_labels = digits.train_images[keep], digits.train_labels[keep]
    else:
        train_images, train_labels = digits.train_images, digits.train_labels

    stream_cls = {"on_the_fly": DistortedStream, "fixed": FixedTrainingSet}.get(spec.train_mode)
    if stream_cls is None:
        raise ValueError(f"unknown train_mode {spec.train_mode!r}; known: on_the_fly, fixed")
    stream = stream_cls(
        spec.data,
        train_images,
        train_labels,
        spec.batch_size,
        seed=spec.seed,
        device=device,
        clutter_source=digits.train_images,
    )

    torch.manual_seed(spec.seed)
    size = test_images.shape[-1]
    model, info = build_mnist_model(
        spec.model,
        (1, size, size),
        transform=spec.transform,
        pool_after_transformer=spec.pool_after_transformer,
        **spec.model_options,
    )
    model.to(device)
    log(
        f"{spec.cell} seed {spec.seed} | {info.param_count:,} parameters (widths {info.widths}, "
        f"localisation {info.localisation_params:,}) | {device} | profile {spec.profile}"
    )

    picture_inputs = test_images[:8].to(device).float() / 255.0

    def on_picture(iteration: int) -> None:
        shown = transformed_batch(model, picture_inputs)
        if shown is None:
            return
        outputs, params = shown
        fig = transformation_figure(picture_inputs, outputs, params, model.transformer.family)
        path = save_figure(fig, run_dir / "pictures" / f"transform_{iteration:07d}.png")
        tracker.log_image(
            "transformations", path, step=iteration, caption=f"{spec.cell} at iteration {iteration}"
        )

    result = train(
        model,
        stream,
        eval_sets,
        settings,
        run_dir,
        batch_size=spec.batch_size,
        tracker=tracker,
        on_picture=on_picture,
        log=log,
        speed=spec.speed,
    )
    if not result.finished:
        log(f"stopped at iteration {result.iterations:,} of {settings.iterations:,}; relaunch to resume")
        return {"finished": False, "iterations": result.iterations}

    paper = paper_error(spec.data, spec.model, spec.transform)
    record = {
        "cell": spec.cell,
        "data": spec.data,
        "model": spec.model,
        "transform": spec.transform,
        "seed": spec.seed,
        "profile": spec.profile,
        "reduced_budget": spec.reduced_budget,
        "finished": True,
        "test_error": result.errors["test"],
        "val_error": result.errors.get("val"),
        "paper_error": paper,
        "param_count": info.param_count,
        "model_info": asdict(info),
        "iterations": result.iterations,
        "batch_size": spec.batch_size,
        "images_seen": result.iterations * spec.batch_size,
        "wall_time_s": round(result.wall_time_s, 1),
        "history": result.history,
        "test_set": {
            "source": spec.data_source,
            "size": int(test_labels.numel()),
            "sha256": set_checksum(test_images, test_labels),
            "generator_version": GENERATOR_VERSION,
        },
        **provenance(device),
        "config": config or {"spec": asdict(spec), "settings": asdict(settings)},
    }
    write_record(record_path, record)
    tracker.summary(
        {"test_error": record["test_error"], "paper_error": paper, "param_count": info.param_count}
    )
    tracker.log_table(
        "result_vs_paper",
        ["cell", "seed", "test_error", "paper_error", "param_count", "iterations", "profile"],
        [
            [
                spec.cell,
                spec.seed,
                record["test_error"],
                paper,
                info.param_count,
                result.iterations,
                spec.profile,
            ]
        ],
    )
    paper_text = f" (paper {paper:.1f}%)" if paper is not None else ""
    log(f"{spec.cell} seed {spec.seed}: test error {record['test_error']:.2f}%{paper_text} -> {record_path}")
    return record
