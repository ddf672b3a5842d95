"""Distorted-MNIST cells (a data set x a model x a transform x a seed): data, model, training, record.

:func:`run_mnist_seed` trains one seed of a cell with :func:`~stn_repro.training.loop.train`;
:func:`run_mnist_seeds_stacked` trains several seeds of one cell at once with
:func:`~stn_repro.training.stacked.train_stacked`. Both are built from the same helpers (data, each seed's
stream and model, pictures, records), so a stacked seed starts from the same weights, reads the same batches
and leaves the same kind of record, in the same folder, as the seed trained alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stn_repro.data import (
    DistortedStream,
    FixedTrainingSet,
    generate_set,
    load_mnist,
    load_set,
    summarise_test_set,
    synthetic_mnist,
    train_indices,
)
from stn_repro.io import atomic_write_text
from stn_repro.models.mnist import build_mnist_model, transformed_batch
from stn_repro.paper import paper_error
from stn_repro.tracking import Tracker
from stn_repro.training.checkpoints import CHECKPOINT_NAME
from stn_repro.training.records import RECORD_NAME
from stn_repro.training.run_folder import RunLock, log_already_finished, read_finished_record
from stn_repro.training.runs import (
    PreparedRun,
    check_seeds,
    picture_saver,
    publish_record,
    resolve_device,
    run_record,
    run_seed,
)
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.stacked import train_stacked
from stn_repro.training.weights import (
    WEIGHTS_NAME,
    classifier_weights,
    load_trained,
    rebuild_classifier,
    save_weights,
)
from stn_repro.viz import transformation_figure

SYNTHETIC_TEST_SEED = (
    10_000  # the synthetic smoke-test set's distortion seed (real sets are built by make data-mnist)
)
# In a stacked run's folder, beside its checkpoint: which seeds the checkpoint holds, in order.
STACKED_SEEDS_NAME = "stacked_seeds.json"


@dataclass
class MnistSpec:
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
    # Which reading of the paper's parameter budget model_options["param_budget"] comes from (recorded, and
    # the tables keep the readings apart): "about_400k" or "width_ranges" (configs/budget).
    budget_reading: str = "about_400k"
    speed: SpeedSettings = field(default_factory=SpeedSettings)  # how steps run, not what is trained

    @property
    def cell(self) -> str:
        return f"{self.data}-{self.model}-{self.transform or 'none'}"


@dataclass
class MnistData:
    """The data of a cell, the same for every seed: training digits, evaluation sets, picture inputs."""

    train_images: Tensor  # uint8 digits the training stream distorts (CPU)
    train_labels: Tensor
    clutter_source: Tensor  # the digits TC's clutter is cut from (all 60k training digits)
    test_images: Tensor  # the distorted test set, uint8 (CPU)
    test_labels: Tensor
    eval_sets: dict[str, tuple[Tensor, Tensor]]  # name -> (images, labels) on the training device
    picture_inputs: Tensor  # the first 8 test images, float in [0, 1] on the training device

    @property
    def image_size(self) -> int:
        return self.test_images.shape[-1]


def load_mnist_data(spec: MnistSpec, device: torch.device) -> MnistData:
    """Load (or, for ``data_source="synthetic"``, generate) the training digits and evaluation sets."""
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
    return MnistData(
        train_images=train_images,
        train_labels=train_labels,
        clutter_source=digits.train_images,
        test_images=test_images,
        test_labels=test_labels,
        eval_sets=eval_sets,
        picture_inputs=test_images[:8].to(device).float() / 255.0,
    )


def prepare_mnist_seed(spec: MnistSpec, data: MnistData, device: torch.device) -> PreparedRun:
    """The batch stream (seeded by ``spec.seed``) and the model (built after ``torch.manual_seed(spec.seed)``)
    of one seed, with what its record says. Single and stacked runs both come through here, so a seed
    starts from the same weights and reads the same batches either way."""
    stream_cls = {"on_the_fly": DistortedStream, "fixed": FixedTrainingSet}.get(spec.train_mode)
    if stream_cls is None:
        raise ValueError(f"unknown train_mode {spec.train_mode!r}; known: on_the_fly, fixed")
    stream = stream_cls(
        spec.data,
        data.train_images,
        data.train_labels,
        spec.batch_size,
        seed=spec.seed,
        device=device,
        clutter_source=data.clutter_source,
    )
    torch.manual_seed(spec.seed)
    model, info = build_mnist_model(
        spec.model,
        (1, data.image_size, data.image_size),
        transform=spec.transform,
        pool_after_transformer=spec.pool_after_transformer,
        **spec.model_options,
    )
    model.to(device)
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
            f"localisation {info.localisation_params:,}) | {device} | profile {spec.profile}"
        ),
        record={
            "experiment": "mnist",
            "data": spec.data,
            "model": spec.model,
            "transform": spec.transform,
            "paper_error": paper_error(spec.data, spec.model, spec.transform),
            "model_info": asdict(info),
            "budget_reading": spec.budget_reading,
            "test_set": summarise_test_set(spec.data_source, data.test_images, data.test_labels),
        },
        weights=classifier_weights(
            spec.model,
            spec.transform,
            (1, data.image_size, data.image_size),
            spec.pool_after_transformer,
            spec.model_options,
        ),
        speed=spec.speed,
        figure=lambda: mnist_picture(model, data.picture_inputs),
    )


def mnist_picture(model: nn.Module, inputs: Tensor):
    """The figure of ``model``'s transformer on ``inputs`` (grid on the input, output beside), or ``None``."""
    shown = transformed_batch(model, inputs)
    if shown is None:
        return None
    outputs, params = shown
    return transformation_figure(inputs, outputs, params, model.transformer.family)


def load_trained_mnist_model(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """The model a finished run saved, rebuilt, loaded and in eval mode.

    ``path`` is the weights file or the run folder holding it (``runs/mnist/<profile>/<cell>/seed<k>``,
    single or stacked runs alike).
    """
    return load_trained(path, rebuild_classifier(build_mnist_model), device)


def run_mnist_seed(
    spec: MnistSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate one seed of a cell in ``run_dir`` with :func:`stn_repro.runs.run_seed`
    (resume, lock, weights, record, tracker); return its record."""
    return run_seed(
        spec,
        lambda device: prepare_mnist_seed(spec, load_mnist_data(spec, device), device),
        settings,
        run_dir,
        config=config,
        make_tracker=make_tracker,
        log=log,
    )


def run_mnist_seeds_stacked(
    spec: MnistSpec,
    seeds: Sequence[int],
    settings: TrainSettings,
    stacked_dir: Path,
    seed_dirs: Sequence[Path],
    *,
    configs: Mapping[int, dict[str, Any]] | None = None,
    make_tracker: Callable[[MnistSpec, Path], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[int, dict[str, Any]]:
    """Train the seeds ``seeds`` of the cell ``spec`` (its own ``seed`` is ignored) at once, stacked into one
    model with :func:`~stn_repro.training.stacked.train_stacked`; return each seed's record.

    Each seed's record (and pictures) go to its folder in ``seed_dirs`` (in the order of ``seeds``), as
    :func:`run_mnist_seed` would write them, with ``engine = {"name": "stacked", "seeds", "stacked_dir",
    "shared_wall_time": True}``: its ``wall_time_s`` is the whole stacked run's. The stacked run's
    checkpoint lives in ``stacked_dir``; a relaunch resumes from it. Seeds already finished (by either
    runner) are skipped; if one seed is left and no stacked checkpoint waits, it trains alone with
    :func:`run_mnist_seed`. ``configs`` maps a seed to the resolved config to record; ``make_tracker(seed_spec,
    seed_dir)`` makes the tracker of each seed that trains (the caller's; finished here).

    A seed not finished in this process (``settings.stop_after``) gets ``{"finished": False, "iterations"}``.
    """
    seeds = check_seeds(seeds)
    if len(seed_dirs) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(seed_dirs)} seed folders: give one folder per seed")
    stacked_dir = Path(stacked_dir)
    seed_dir_of = {seed: Path(d) for seed, d in zip(seeds, seed_dirs, strict=True)}
    seed_spec_of = {seed: replace(spec, seed=seed) for seed in seeds}
    configs = configs or {}
    make_tracker = make_tracker or (lambda seed_spec, seed_dir: Tracker())

    records: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        finished = read_finished_record(seed_dir_of[seed])
        if finished is not None:
            log_already_finished(finished, seed_dir_of[seed], log)
            records[seed] = finished
    pending = [seed for seed in seeds if seed not in records]
    if not pending:
        return records

    resuming = (stacked_dir / CHECKPOINT_NAME).exists()
    if resuming:
        # The checkpoint fixes which models are stacked: resume exactly those, even if one of them has
        # meanwhile been finished elsewhere (its record is kept; its stacked twin just trains along).
        train_seeds = read_stacked_seeds(stacked_dir)
        missing = [seed for seed in pending if seed not in train_seeds]
        if missing:
            raise ValueError(
                f"{stacked_dir / CHECKPOINT_NAME} holds seeds {train_seeds}, not the unfinished seeds "
                f"{missing}; delete that checkpoint to train the unfinished seeds {pending} afresh"
            )
    else:
        train_seeds = pending
    if len(train_seeds) == 1:
        (seed,) = train_seeds
        records[seed] = run_mnist_seed(
            seed_spec_of[seed],
            settings,
            seed_dir_of[seed],
            config=configs.get(seed),
            make_tracker=lambda: make_tracker(seed_spec_of[seed], seed_dir_of[seed]),
            log=log,
        )
        return records

    with RunLock(stacked_dir, log=log):
        return _train_pending_stacked(
            spec,
            settings,
            stacked_dir,
            train_seeds,
            resuming,
            pending,
            records,
            seed_dir_of,
            seed_spec_of,
            configs,
            make_tracker,
            log,
        )


def _train_pending_stacked(
    spec: MnistSpec,
    settings: TrainSettings,
    stacked_dir: Path,
    train_seeds: list[int],
    resuming: bool,
    pending: list[int],
    records: dict[int, dict[str, Any]],
    seed_dir_of: dict[int, Path],
    seed_spec_of: dict[int, MnistSpec],
    configs: Mapping[int, dict[str, Any]],
    make_tracker: Callable[[MnistSpec, Path], Tracker],
    log: Callable[[str], None],
) -> dict[int, dict[str, Any]]:
    """The part of :func:`run_mnist_seeds_stacked` that trains, while it owns ``stacked_dir``."""
    for seed in train_seeds:
        single_checkpoint = seed_dir_of[seed] / CHECKPOINT_NAME
        if single_checkpoint.exists() and not resuming:
            log(
                f"{spec.cell} seed {seed}: {single_checkpoint} (an unfinished single-seed run) is not resumed "
                "here; the seed trains stacked from the start. Relaunch with seed="
                f"{seed} instead to finish that run, or delete the checkpoint."
            )
    device = resolve_device(spec.device)
    data = load_mnist_data(spec, device)
    seed_runs = [prepare_mnist_seed(seed_spec_of[seed], data, device) for seed in train_seeds]
    for seed_run in seed_runs:
        log(seed_run.description)
    if not resuming:
        write_stacked_seeds(stacked_dir, train_seeds)
    # Only seeds whose record is still missing get a tracker (and a record): no empty W&B runs.
    trackers = {
        seed: make_tracker(seed_spec_of[seed], seed_dir_of[seed]) if seed in pending else Tracker()
        for seed in train_seeds
    }
    # Pictures only for the seeds that get a record: a seed finished elsewhere keeps its own.
    picture_makers = [
        picture_saver(seed_run, seed_dir_of[seed], trackers[seed])
        for seed, seed_run in zip(train_seeds, seed_runs, strict=True)
        if seed in pending
    ]

    def on_picture(iteration: int) -> None:  # train_stacked has written the trained values into the models
        for draw in picture_makers:
            draw(iteration)

    try:
        results = train_stacked(
            [seed_run.model for seed_run in seed_runs],
            [seed_run.stream for seed_run in seed_runs],
            data.eval_sets,
            settings,
            stacked_dir,
            batch_size=spec.batch_size,
            speed=spec.speed,
            trackers=[trackers[seed] for seed in train_seeds],
            on_picture=on_picture,
            log=log,
        )
        if not results[0].finished:
            for seed in pending:
                records[seed] = {
                    "finished": False,
                    "iterations": results[0].iterations,
                    "stopped_by": results[0].stopped_by,
                }
            return records
        engine = {
            "name": "stacked",
            "seeds": train_seeds,
            "stacked_dir": str(stacked_dir),
            "shared_wall_time": True,  # wall_time_s is the stacked run's, shared by all its seeds
        }
        for seed_run, result in zip(seed_runs, results, strict=True):
            seed = seed_run.seed
            if seed not in pending:
                log(f"{spec.cell} seed {seed}: finished elsewhere meanwhile; its record is kept")
                continue
            save_weights(
                seed_dir_of[seed] / WEIGHTS_NAME,
                seed_run.model,
                seed_run.cell,
                seed_run.seed,
                seed_run.weights,
            )
            record = run_record(
                seed_run,
                settings,
                result,
                device,
                profile=spec.profile,
                reduced_budget=spec.reduced_budget,
                engine=engine,
                config=configs.get(seed)
                or {"spec": asdict(seed_spec_of[seed]), "settings": asdict(settings)},
            )
            publish_record(record, seed_dir_of[seed] / RECORD_NAME, trackers[seed], log)
            records[seed] = record
    finally:
        for tracker in trackers.values():
            tracker.finish()
    return records


def write_stacked_seeds(stacked_dir: Path, seeds: Sequence[int]) -> None:
    atomic_write_text(Path(stacked_dir) / STACKED_SEEDS_NAME, json.dumps({"seeds": list(seeds)}) + "\n")


def read_stacked_seeds(stacked_dir: Path) -> list[int]:
    """The seeds the stacked checkpoint in ``stacked_dir`` holds, in order."""
    path = Path(stacked_dir) / STACKED_SEEDS_NAME
    if not path.exists():
        raise ValueError(
            f"{Path(stacked_dir) / CHECKPOINT_NAME} has no {STACKED_SEEDS_NAME} beside it saying which seeds "
            "it holds; delete the checkpoint to start the stacked run afresh"
        )
    return json.loads(path.read_text())["seeds"]
