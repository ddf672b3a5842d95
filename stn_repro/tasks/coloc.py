"""Co-localisation (Appendix A.2, Table 5): one digit class's 100 images, an attention transformer, no labels.

Two kinds of run, both through :func:`stn_repro.runs.run_single` (resume, lock, weights, record, tracker,
pictures):

- the **embedding** e(): the Sect. 2 CNN trained on undistorted 28x28 MNIST digits
  (:class:`~stn_repro.data.plain.PlainStream`), one run per (profile, data source, seed), shared by every
  co-localisation run of that profile; :func:`ensure_embedding` trains it once (or waits for the process
  training it) and every later call reuses its ``model.pt``;
- a **co-localisation** run: for one digit class of ``coloc`` (T) or ``coloc_tc`` (TC), the first
  ``num_images`` (100) images of that class in the stored test set are the whole data; the attention
  transformer is trained by :class:`~stn_repro.training.colocalisation.ColocLearner` on the hinge loss with
  e() frozen, and scored on the same images: % whose predicted box has IoU > 0.5 with the true box.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from torch import Tensor

from stn_repro.data import (
    DEFAULT_SEED,
    GENERATOR_VERSION,
    derive_seed,
    generate_colocalisation_set,
    load_mnist,
    load_set_arrays,
    set_checksum,
    synthetic_mnist,
)
from stn_repro.data.plain import PlainStream
from stn_repro.models.coloc import (
    COLOC_IMAGE_SIZE,
    COLOC_OUTPUT_SIZE,
    EMBEDDING_NORMS,
    CnnEmbedding,
    box_iou,
    colocalisation_transformer,
)
from stn_repro.models.mnist import build_mnist_model, count_params
from stn_repro.paper import coloc_paper_localised
from stn_repro.runs import (
    WEIGHTS_NAME,
    PreparedRun,
    RunLocked,
    classifier_weights,
    load_trained,
    read_finished_record,
    run_seed,
)
from stn_repro.tasks.mnist import load_trained_model
from stn_repro.tracking import Tracker
from stn_repro.training.colocalisation import (
    LOCALISATION,
    NEGATIVES,
    OPTIMIZERS,
    ColocLearner,
    negatives_label,
    predicted_boxes,
)
from stn_repro.training.loop import SpeedSettings, TrainSettings
from stn_repro.training.records import atomic_write_text, file_sha256
from stn_repro.transformers import SpatialTransformer

COLOC_SETS = {"coloc_t": "coloc", "coloc_tc": "coloc_tc"}  # data name -> stored set (make data-mnist)
DATA_SOURCES = ("mnist", "synthetic")
# The synthetic stand-in (tests and smoke runs; no real MNIST needed): seven-segment digits, enough of each
# class for 100 images, and its own seeded co-localisation images.
SYNTHETIC_DIGITS = {"num_train": 1024, "num_test": 1500, "seed": 0}
NUM_PICTURES = 8


# --- the embedding e() ---------------------------------------------------------------------------------------


@dataclass
class EmbeddingSpec:
    """The embedding CNN's run: the Sect. 2 CNN on undistorted 28x28 digits (all 60k training digits)."""

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
        # What stn_repro.tasks.mnist.load_trained_model rebuilds the CNN from.
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


def load_embedding(
    run_dir: Path | str, device: torch.device | str = "cpu", normalise: str = "none"
) -> CnnEmbedding:
    """e() from a finished embedding run (its folder or ``model.pt``): frozen, in eval mode; ``normalise``
    scales each e(x) to unit length (see :class:`~stn_repro.models.coloc.CnnEmbedding`)."""
    model = load_trained_model(run_dir, device)
    return CnnEmbedding(model.classifier, normalise=normalise).to(device)


# --- co-localisation -------------------------------------------------------------------------------------------


@dataclass
class ColocSpec:
    """One co-localisation optimisation: a set (T or TC), a digit class, a seed, and the documented choices."""

    data: str  # coloc_t | coloc_tc
    digit: int
    seed: int
    batch_size: int  # images per step; the loss averages over all ordered pairs of them
    profile: str
    reduced_budget: bool
    num_images: int = 100  # the first num_images of the class in the stored test set
    init_scale: float = 0.95  # about the identity (whole image); 1/3: a 28 px window
    init_translation: tuple[float, float] = (0.0, 0.0)
    scale_range: tuple[float, float] | None = (0.25, 1.0)  # None: s unbounded
    inside: bool = True  # keep the window inside the image
    embedding_norm: str = "unit"  # how e(x) is scaled (stn_repro.models.coloc.EMBEDDING_NORMS)
    margin: float = 1.0  # the hinge's margin (the paper's 1)
    crop_size: int = COLOC_OUTPUT_SIZE  # I_n^rand: a random crop of this side (negatives="crop")
    negatives: str = "crop"  # what I_n^rand is (stn_repro.training.colocalisation.NEGATIVES)
    window_from: int | None = None  # negatives="crop_then_window": the step from which windows are used
    optimizer: str = "adam"
    data_source: str = "mnist"
    data_dir: Path | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.data not in COLOC_SETS:
            raise ValueError(f"unknown co-localisation set {self.data!r}; known: {', '.join(COLOC_SETS)}")
        if isinstance(self.digit, bool) or not isinstance(self.digit, int) or not 0 <= self.digit <= 9:
            raise ValueError(f"digit={self.digit!r} must be a digit class 0-9")
        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"unknown data source {self.data_source!r}; known: {', '.join(DATA_SOURCES)}")
        if self.embedding_norm not in EMBEDDING_NORMS:
            raise ValueError(
                f"embedding_norm={self.embedding_norm!r}: use one of {', '.join(EMBEDDING_NORMS)}"
            )
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives={self.negatives!r}: use one of {', '.join(NEGATIVES)}")
        negatives_label(self.negatives, self.window_from)  # crop_then_window needs its switch step
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if not 2 <= self.num_images or not 2 <= self.batch_size <= self.num_images:
            raise ValueError(
                f"need 2 <= batch_size <= num_images, got batch_size={self.batch_size}, "
                f"num_images={self.num_images}"
            )
        try:  # the start and the bounds agree (cheap: the net is tiny)
            colocalisation_transformer(
                self.init_scale, self.init_translation, scale_range=self.scale_range, inside=self.inside
            )
        except ValueError as error:
            raise ValueError(f"coloc.init_scale / init_translation / scale_range / inside: {error}") from None

    @property
    def set_name(self) -> str:
        return COLOC_SETS[self.data]

    @property
    def synthetic(self) -> bool:
        return self.data_source == "synthetic"

    @property
    def cell(self) -> str:
        return self.cell_name(self.data, self.synthetic, self.digit, self.negatives_label)

    @property
    def negatives_label(self) -> str:
        return negatives_label(self.negatives, self.window_from)

    @staticmethod
    def cell_name(data: str, synthetic: bool, digit: object, negatives: str = "crop") -> str:
        """``<data>[-synthetic][-<negatives>]-digit<k>``, ``negatives`` as :func:`negatives_label` names it;
        the default negatives (crop) are not named."""
        kind = "" if negatives == "crop" else f"-{negatives}"
        return f"{data}{'-synthetic' if synthetic else ''}{kind}-digit{digit}"


@dataclass
class ColocData:
    """The images of one co-localisation run: the whole data, and the evaluation set."""

    images: Tensor  # uint8 [N, 1, 84, 84] (CPU)
    boxes: Tensor  # float [N, 4] true boxes, (x0, y0, x1, y1) px
    indices: Tensor  # the images' positions in the stored set (the synthetic digits' for synthetic data)
    checksum: str


def load_coloc_data(spec: ColocSpec) -> ColocData:
    """The first ``spec.num_images`` images of class ``spec.digit`` in the stored ``coloc`` / ``coloc_tc``
    test set (``make data-mnist``), with their true boxes; for ``data_source="synthetic"`` the same from
    synthetic digits, placed (and cluttered for TC) by the real generator with a fixed seed."""
    if spec.synthetic:
        digits = _synthetic_digits()
        chosen = (digits.test_labels == spec.digit).nonzero().squeeze(1)[: spec.num_images]
        _check_enough(chosen, spec, f"the synthetic stand-in ({SYNTHETIC_DIGITS['num_test']} digits)")
        data = generate_colocalisation_set(
            digits.test_images[chosen],
            digits.test_labels[chosen],
            derive_seed(DEFAULT_SEED, "synthetic-coloc", spec.set_name, spec.digit),
            clutter_source=digits.train_images if spec.data == "coloc_tc" else None,
        )
        images, boxes = data["images"], data["boxes"]
    else:
        stored = load_set_arrays(spec.set_name, "test", spec.data_dir)
        chosen = (stored["labels"] == spec.digit).nonzero().squeeze(1)[: spec.num_images]
        _check_enough(chosen, spec, f"the stored set {spec.set_name}")
        images, boxes = stored["images"][chosen], stored["boxes"][chosen].float()
    labels = torch.full((len(chosen),), spec.digit, dtype=torch.int64)
    return ColocData(images.contiguous(), boxes.contiguous(), chosen, set_checksum(images, labels))


def _check_enough(chosen: Tensor, spec: ColocSpec, where: str) -> None:
    if len(chosen) < spec.num_images:
        raise ValueError(
            f"{where} has only {len(chosen)} images of digit {spec.digit}; lower num_images "
            f"(asked for {spec.num_images})"
        )


def prepare_coloc(
    spec: ColocSpec,
    data: ColocData,
    embedding: CnnEmbedding,
    embedding_record: dict[str, Any],
    embedding_dir: Path,
    device: torch.device,
    box_history: Path | None = None,
) -> PreparedRun:
    """The transformer (built after ``torch.manual_seed(spec.seed)``) and the learner of one run, with what
    its record says. ``box_history``: a JSON file where each picture step adds the found boxes of the pictured
    images (:func:`update_box_history`), so each picture also shows the boxes over training so far."""
    torch.manual_seed(spec.seed)
    transformer = colocalisation_transformer(
        spec.init_scale, spec.init_translation, scale_range=spec.scale_range, inside=spec.inside
    ).to(device)
    embedding = embedding.to(device)
    images, boxes = data.images.to(device), data.boxes.to(device)
    shown = slice(0, NUM_PICTURES)
    learners: list[ColocLearner] = []  # the picture reads the step count of the learner in use

    def make_learner(settings: TrainSettings) -> ColocLearner:
        learner = ColocLearner(
            transformer,
            embedding,
            images,
            settings,
            batch_size=spec.batch_size,
            seed=spec.seed,
            margin=spec.margin,
            crop_size=spec.crop_size,
            optimizer=spec.optimizer,
            negatives=spec.negatives,
            window_from=spec.window_from,
        )
        learners.append(learner)
        return learner

    def figure():
        step = learners[-1].steps if learners else 0
        return boxes_picture(transformer, images[shown], boxes[shown], box_history, step)

    param_count = count_params(transformer)
    paper = coloc_paper_localised(spec.data)
    synthetic = " | SYNTHETIC digits" if spec.synthetic else ""
    return PreparedRun(
        cell=spec.cell,
        seed=spec.seed,
        model=transformer,
        stream=None,  # the learner draws its own batches from the images
        eval_sets={"test": (images, boxes)},
        batch_size=spec.batch_size,
        param_count=param_count,
        description=(
            f"{spec.cell} seed {spec.seed} | {len(images)} images of digit {spec.digit} | attention "
            f"transformer, {param_count:,} parameters, starting at s={spec.init_scale:g} | e() "
            f"({spec.embedding_norm}), negatives: {spec.negatives_label} | from {embedding_dir} ({embedding_record['test_error']:.2f}% test "
            f"error) | {device} | "
            f"profile {spec.profile}{synthetic}"
        ),
        record={
            "experiment": "coloc",
            "data": spec.data,
            "digit": spec.digit,
            "model": "attention_st",
            "transform": "attention",
            "synthetic": spec.synthetic,
            # test_error is the % NOT localised; the paper's 100% localised on T is 0.0 here. TC: a range.
            "paper_error": None if paper["low"] != paper["high"] else 100.0 - paper["high"],
            "paper_localised": paper,
            "choices": {
                "num_images": spec.num_images,
                "images": "the first num_images of the digit class, in the stored test set's order",
                "init": {"scale": spec.init_scale, "translation": list(spec.init_translation)},
                "scale_range": None if spec.scale_range is None else list(spec.scale_range),
                "inside": spec.inside,
                "embedding_norm": spec.embedding_norm,
                "batch_size": spec.batch_size,
                "pairs_per_step": spec.batch_size * (spec.batch_size - 1),
                "margin": spec.margin,
                "crop_size": spec.crop_size,
                "negatives": spec.negatives_label,
                "window_from": spec.window_from,
                "optimizer": spec.optimizer,
            },
            "embedding": {
                "run_dir": str(embedding_dir),
                "test_error": embedding_record["test_error"],
                "profile": embedding_record["profile"],
                "iterations": embedding_record["iterations"],
                "param_count": embedding_record["param_count"],
                "weights_sha256": file_sha256(Path(embedding_dir) / WEIGHTS_NAME),
                "dim": embedding_dim(embedding, device),
            },
            "test_set": {
                "source": "synthetic" if spec.synthetic else spec.set_name,
                "size": len(images),
                "indices_first": data.indices[:5].tolist(),
                "sha256": data.checksum,
                "generator_version": GENERATOR_VERSION,
            },
        },
        weights={
            "kind": "coloc_attention",
            "init_scale": spec.init_scale,
            "init_translation": list(spec.init_translation),
            "scale_range": None if spec.scale_range is None else list(spec.scale_range),
            "inside": spec.inside,
            "image_size": COLOC_IMAGE_SIZE,
            "output_size": COLOC_OUTPUT_SIZE,
        },
        objective=LOCALISATION,
        figure=figure,
        make_learner=make_learner,
    )


def embedding_dim(embedding: CnnEmbedding, device: torch.device) -> int:
    with torch.no_grad():
        return int(embedding(torch.zeros(1, 1, 28, 28, device=device)).shape[1])


def run_coloc(
    spec: ColocSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    embedding_spec: EmbeddingSpec,
    embedding_settings: TrainSettings,
    embedding_dir: Path,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    make_embedding_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One co-localisation run in ``run_dir`` (resuming), after making sure its embedding exists in
    ``embedding_dir`` (trained there first if needed); returns the co-localisation record (or the
    embedding's ``{"finished": False, ...}`` if that stopped early)."""
    if embedding_spec.data_source != spec.data_source:
        raise ValueError(
            f"the embedding is trained on {embedding_spec.data_source!r} digits but the images are "
            f"{spec.data_source!r}: use one data source for both"
        )
    embedding_record = ensure_embedding(
        embedding_spec,
        embedding_settings,
        embedding_dir,
        config=config,
        make_tracker=make_embedding_tracker,
        log=log,
    )
    if not embedding_record.get("finished"):
        return embedding_record

    def prepare(device: torch.device) -> PreparedRun:
        return prepare_coloc(
            spec,
            load_coloc_data(spec),
            load_embedding(embedding_dir, device, normalise=spec.embedding_norm),
            embedding_record,
            Path(embedding_dir),
            device,
            box_history=Path(run_dir) / "pictures" / BOX_HISTORY_NAME,
        )

    return run_seed(
        spec,
        prepare,
        settings,
        run_dir,
        config=config,
        make_tracker=make_tracker,
        log=log,
    )


def load_trained_transformer(path: Path | str, device: torch.device | str = "cpu") -> SpatialTransformer:
    """The attention transformer a finished co-localisation run saved (its folder or ``model.pt``)."""

    def rebuild(state: dict[str, Any]) -> SpatialTransformer:
        if state.get("kind") != "coloc_attention":
            raise ValueError(f"{path} holds a {state.get('kind')!r} model, not a co-localisation transformer")
        return colocalisation_transformer(
            state["init_scale"],
            state["init_translation"],
            scale_range=state["scale_range"],
            inside=state["inside"],
        )

    return load_trained(path, rebuild, device)


# --- pictures ---------------------------------------------------------------------------------------------------


# In the run's pictures/: the pictured images' found boxes at each picture step.
BOX_HISTORY_NAME = "boxes.json"


def update_box_history(path: Path, iteration: int, boxes: Tensor) -> list[tuple[int, Tensor]]:
    """Add ``boxes [N, 4]`` (pixel ``(x0, y0, x1, y1)``) found at ``iteration`` to the JSON list in ``path``
    and return the whole history, oldest first, as ``(iteration, boxes)``. Entries from ``iteration`` on are
    replaced: a run resumed from an earlier checkpoint draws those steps again."""
    path = Path(path)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["iteration"] < iteration]
    entries.append({"iteration": int(iteration), "boxes": boxes.detach().cpu().float().tolist()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entries) + "\n")
    return [(e["iteration"], torch.tensor(e["boxes"])) for e in entries]


def boxes_picture(
    transformer: SpatialTransformer,
    images: Tensor,
    true_boxes: Tensor,
    box_history: Path | None = None,
    iteration: int = 0,
):
    """The images with the predicted box (orange) and the true box (red), each image's crop below, and,
    with ``box_history``, the boxes found at every picture step so far, this one (``iteration``) added to
    the file (:func:`update_box_history`): the paper's Table 5 (right), one figure per picture step."""
    pred = predicted_boxes(transformer, images)
    history = None if box_history is None else update_box_history(box_history, iteration, pred)
    was_training = transformer.training
    transformer.eval()
    with torch.no_grad():
        outputs = transformer(images.float() / 255.0 if images.dtype == torch.uint8 else images)
    transformer.train(was_training)
    return boxes_figure(images, pred, true_boxes, outputs, history)


def _draw_box(ax, box: Tensor, colour, width: float) -> None:
    # imshow puts pixel i's centre at i: the continuous pixel position x sits at x - 0.5.
    x0, y0, x1, y1 = box.tolist()
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, linewidth=width))


def boxes_figure(
    images: Tensor,
    pred_boxes: Tensor,
    true_boxes: Tensor,
    outputs: Tensor | None = None,
    history: list[tuple[int, Tensor]] | None = None,
):
    """``images [N, 1, S, S]`` with ``pred_boxes`` (orange) and ``true_boxes`` (red) drawn, IoU as titles;
    ``outputs [N, 1, s, s]`` (the transformer's crops), if given, in a second row; ``history`` (``(iteration,
    boxes [N, 4])``, oldest first), if given, in a last row: every step's box, dark (early) to light (late)."""
    images = images.detach().cpu()
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    pred_boxes, true_boxes = pred_boxes.detach().cpu().float(), true_boxes.detach().cpu().float()
    iou = box_iou(pred_boxes, true_boxes)
    n = images.shape[0]
    rows = 1 + (outputs is not None) + bool(history)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.8 * rows), squeeze=False)
    size = images.shape[-1]
    image_rows = [0] + ([rows - 1] if history else [])
    for i in range(n):
        for row in image_rows:
            axes[row, i].imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, i].set_xlim(-2.5, size + 1.5)  # a little margin: a whole-image box stays visible
            axes[row, i].set_ylim(size + 1.5, -2.5)
        _draw_box(axes[0, i], true_boxes[i], "tab:red", 0.8)
        _draw_box(axes[0, i], pred_boxes[i], "tab:orange", 1.2)
        axes[0, i].set_title(f"IoU {iou[i]:.2f}", fontsize=7, color="black" if iou[i] > 0.5 else "tab:red")
        if outputs is not None:
            axes[1, i].imshow(outputs[i, 0].detach().cpu().float().numpy(), cmap="gray", vmin=0, vmax=1)
        if history:
            _draw_box(axes[-1, i], true_boxes[i], "tab:red", 0.8)
            for k, (_, boxes) in enumerate(history):
                colour = plt.cm.viridis(k / max(len(history) - 1, 1))
                _draw_box(axes[-1, i], boxes[i], colour, 0.9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("true (red), found (orange)", fontsize=6)
    if outputs is not None:
        axes[1, 0].set_ylabel("transformer output", fontsize=6)
    if history:
        first, last = history[0][0], history[-1][0]
        axes[-1, 0].set_ylabel(f"found at it. {first:,}-{last:,}\n(dark to light)", fontsize=6)
    fig.tight_layout()
    return fig
