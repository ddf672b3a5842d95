"""Co-localisation's embedding e(): the CNN whose activations compare two views of a digit.

Two kinds (``embedding=`` in configs/coloc.yaml):

- ``table1`` (the paper's): "the CNN trained for digit classification from Sect. 4.1", a finished Table 1
  CNN run on distorted MNIST (``python -m experiments.mnist model=cnn ...``); nothing is trained here,
  :func:`read_table1_embedding` checks the run and returns its record;
- ``plain`` (the suite's first reading): the same CNN trained on undistorted 28x28 digits, one run per
  (profile, data source, seed), shared by every co-localisation run of that profile: :func:`ensure_embedding`
  trains it once (or waits for the process training it) and every later call reuses its ``model.pt``.

:func:`load_embedding` gives either frozen, as :class:`~stn_repro.models.coloc.CnnEmbedding`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from stn_repro.data import (
    load_mnist,
    set_checksum,
    synthetic_mnist,
)
from stn_repro.data.plain import PlainStream
from stn_repro.models.coloc import (
    CnnEmbedding,
)
from stn_repro.models.mnist import build_mnist_model
from stn_repro.tracking import Tracker
from stn_repro.training.run_folder import RunLocked, read_finished_record
from stn_repro.training.runs import PreparedRun, run_seed
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.weights import classifier_weights, load_trained, rebuild_classifier

DATA_SOURCES = ("mnist", "synthetic")


# The synthetic stand-in (tests and smoke runs; no real MNIST needed): seven-segment digits, enough of each
# class for 100 images, and its own seeded co-localisation images.
SYNTHETIC_DIGITS = {"num_train": 1024, "num_test": 1500, "seed": 0}


EMBEDDING_KINDS = ("table1", "plain")


@dataclass
class EmbeddingSpec:
    """The ``plain`` embedding CNN's run: the Table 1 CNN trained on undistorted 28x28 digits (all 60k
    training digits)."""

    seed: int
    batch_size: int
    profile: str
    reduced_budget: bool
    param_budget: int = 400_000  # as configs/model/cnn.yaml: the Table 1 CNN's widths
    data_source: str = "mnist"
    data_dir: Path | None = None
    device: str = "auto"
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def __post_init__(self) -> None:
        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"unknown data source {self.data_source!r}; known: {', '.join(DATA_SOURCES)}")

    @property
    def cell(self) -> str:
        return f"{self.data_source}-embedding-cnn"


@lru_cache(maxsize=1)
def _synthetic_digits():
    return synthetic_mnist(**SYNTHETIC_DIGITS)


def _digits(source: str, data_dir: Path | None):
    if source == "synthetic":
        return _synthetic_digits()
    if source == "mnist":
        return load_mnist(data_dir)
    raise ValueError(f"unknown data source {source!r}; known: {', '.join(DATA_SOURCES)}")


def prepare_embedding(spec: EmbeddingSpec, device: torch.device) -> PreparedRun:
    """The embedding CNN's seeded stream and model (built after ``torch.manual_seed(spec.seed)``), scored on
    the undistorted test digits."""
    digits = _digits(spec.data_source, spec.data_dir)
    stream = PlainStream(digits.train_images, digits.train_labels, spec.batch_size, spec.seed, device)
    torch.manual_seed(spec.seed)
    model, info = build_mnist_model("cnn", (1, 28, 28), param_budget=spec.param_budget)
    model.to(device)
    test_images = digits.test_images.unsqueeze(1)
    synthetic = " | SYNTHETIC digits" if spec.data_source == "synthetic" else ""
    return PreparedRun(
        cell=spec.cell,
        seed=spec.seed,
        model=model,
        stream=stream,
        eval_sets={"test": (test_images.to(device), digits.test_labels.to(device))},
        batch_size=spec.batch_size,
        param_count=info.param_count,
        description=(
            f"co-localisation embedding: Sect. 2 CNN on undistorted 28x28 digits, seed {spec.seed} | "
            f"{info.param_count:,} parameters (widths {info.widths}) | {device} | profile {spec.profile}"
            f"{synthetic}"
        ),
        record={
            "experiment": "coloc_embedding",
            "data": "plain",
            "model": "cnn",
            "transform": None,
            "synthetic": spec.data_source == "synthetic",
            "paper_error": None,
            "model_info": asdict(info),
            "test_set": {
                "source": spec.data_source,
                "size": int(digits.test_labels.numel()),
                "sha256": set_checksum(test_images, digits.test_labels),
            },
        },
        # What load_embedding rebuilds the CNN from (the Table 1 CNN's weights format).
        weights=classifier_weights("cnn", None, (1, 28, 28), False, {"param_budget": spec.param_budget}),
        speed=spec.speed,
    )


def ensure_embedding(
    spec: EmbeddingSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
    wait_s: float = 10.0,
) -> dict[str, Any]:
    """The embedding run's record: trained in ``run_dir`` if it is not finished (resuming its checkpoint),
    else read back. If another process is training it (its lock), wait for that process, polling every
    ``wait_s`` seconds, then use its result. A run stopped early returns ``{"finished": False, ...}``.

    ``run_dir`` may be any finished embedding run of the same digits, e.g. the committed
    ``results/records/coloc_paper/embedding`` (its profile and seed are then the record's, and each
    co-localisation record names them); a finished run of anything else is refused."""
    finished = read_finished_record(run_dir)
    if finished is not None and (
        finished.get("experiment") != "coloc_embedding" or finished.get("cell") != spec.cell
    ):
        raise ValueError(
            f"{run_dir} holds a finished {finished.get('experiment')!r} run ({finished.get('cell')!r}), not an "
            f"embedding of {spec.data_source} digits ({spec.cell!r}): point embedding.run_dir at an embedding "
            "run's folder (runs/coloc/embedding/<profile>/<source>/seed<k>, results/records/coloc_<profile>/embedding)"
        )
    announced = False
    while True:
        try:
            return run_seed(
                spec,
                lambda device: prepare_embedding(spec, device),
                settings,
                run_dir,
                config=config,
                make_tracker=make_tracker,
                log=log,
            )
        except RunLocked as error:
            if not announced:
                log(f"waiting for the embedding another process is training: {error}")
                announced = True
            time.sleep(wait_s)


def read_table1_embedding(run_dir: Path | str) -> dict[str, Any]:
    """The record of the finished Table 1 CNN run in ``run_dir`` that serves as e() (``embedding=table1``).

    Refuses, naming the fix, a folder without a finished run or its weights, and a run of anything but a
    Table 1 CNN (no transformer) on distorted MNIST."""
    run_dir = Path(run_dir)
    example = "results/records/mnist_fast/r-cnn-none/seed1"
    record = read_finished_record(run_dir)
    if record is None:
        raise FileNotFoundError(
            f"embedding.run_dir={run_dir} holds no finished run: e() is a finished Table 1 CNN run (record.json "
            f"and model.pt), e.g. {example}, or one you train with "
            "`python -m experiments.mnist data=r model=cnn transformer=none profile=fast`"
        )
    if record.get("experiment") != "mnist" or record.get("model") != "cnn" or record.get("transform"):
        raise ValueError(
            f"{run_dir} holds a finished {record.get('experiment')!r} run of model {record.get('model')!r} "
            f"(transform {record.get('transform')!r}), not a Table 1 CNN: point embedding.run_dir at a CNN run "
            f"such as {example}, or use embedding=plain (the CNN on undistorted digits)"
        )
    if not (run_dir / record.get("weights", "model.pt")).is_file():
        raise FileNotFoundError(
            f"{run_dir} has the record of a finished CNN run but not its weights "
            f"({record.get('weights', 'model.pt')}): e() needs them; retrain the run or copy its model.pt there"
        )
    return record


def load_embedding(
    run_dir: Path | str, device: torch.device | str = "cpu", normalise: str = "none"
) -> CnnEmbedding:
    """e() from a finished embedding run (its folder or ``model.pt``): frozen, in eval mode; ``normalise``
    scales each e(x) to unit length (see :class:`~stn_repro.models.coloc.CnnEmbedding`)."""
    model = load_trained(run_dir, rebuild_classifier(build_mnist_model), device)
    return CnnEmbedding(model.classifier, normalise=normalise).to(device)
