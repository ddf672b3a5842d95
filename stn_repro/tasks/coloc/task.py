"""Co-localisation (Appendix A.2, Table 5): one digit class's 100 images, an attention transformer, no labels.

A run trains the attention transformer by :class:`~stn_repro.tasks.coloc.learner.ColocLearner` on the hinge
loss with e() frozen, for one digit class of ``coloc`` (T) or ``coloc_tc`` (TC): ``num_images`` (100) images
of that class in the stored test set are the whole data, and it is scored on the same images: % whose
predicted box has IoU > 0.5 with the true box. e() is a finished Table 1 CNN run (``embedding=table1``, the
paper's) or the suite's CNN on undistorted digits (``embedding=plain``, trained first by
:func:`~stn_repro.tasks.coloc.embedding.ensure_embedding` where it is not finished); see
:mod:`stn_repro.tasks.coloc.embedding`. Both go through :func:`stn_repro.training.runs.run_seed` (resume,
lock, weights, record, tracker, pictures).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stn_repro.data import (
    DEFAULT_SEED,
    GENERATOR_VERSION,
    generate_colocalisation_set,
    load_set_arrays,
    set_checksum,
)
from stn_repro.io import file_sha256
from stn_repro.models.coloc import (
    COLOC_IMAGE_SIZE,
    COLOC_OUTPUT_SIZE,
    EMBEDDING_NORMS,
    CnnEmbedding,
    colocalisation_transformer,
)
from stn_repro.models.mnist import count_params
from stn_repro.paper import coloc_paper_localised
from stn_repro.seeding import derive_seed
from stn_repro.tasks.coloc.embedding import (
    DATA_SOURCES,
    SYNTHETIC_DIGITS,
    EmbeddingSpec,
    _synthetic_digits,
    ensure_embedding,
    load_embedding,
    read_table1_embedding,
)
from stn_repro.tasks.coloc.learner import (
    LOCALISATION,
    NEGATIVES,
    OPTIMIZERS,
    ColocLearner,
    MultiStartLearner,
    negatives_label,
)
from stn_repro.tasks.coloc.pictures import BOX_HISTORY_NAME, boxes_picture
from stn_repro.tracking import Tracker
from stn_repro.training.run_folder import read_finished_record
from stn_repro.training.runs import PreparedRun, run_seed
from stn_repro.training.settings import TrainSettings
from stn_repro.training.weights import WEIGHTS_NAME, load_trained
from stn_repro.transformers import SpatialTransformer

COLOC_SETS = {"coloc_t": "coloc", "coloc_tc": "coloc_tc"}  # data name -> stored set (make data-mnist)
NUM_PICTURES = 8


# --- the embedding e() ---------------------------------------------------------------------------------------


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
    num_images: int = 100  # num_images of the class in the stored test set, from its image_offset-th on
    image_offset: int = 0  # 0: the scored draw (the first 100); 100: the tuning draw (the next 100)
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
    # A study of the loss, not of the search: the first oracle_steps steps fit the transformer to the true
    # boxes (squared error on (s, tx, ty)), then the hinge loss takes over. If the boxes then stay, the loss is
    # right and only the search fails.
    oracle_steps: int = 0
    # Several starts, the lowest loss kept (MultiStartLearner): besides (init_scale, init_translation), each
    # (s, tx, ty) of extra_starts trains for start_steps steps beside it; the lowest-loss one goes on.
    extra_starts: tuple[tuple[float, float, float], ...] = ()
    start_steps: int = 0
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
        if (
            isinstance(self.oracle_steps, bool)
            or not isinstance(self.oracle_steps, int)
            or self.oracle_steps < 0
        ):
            raise ValueError(f"oracle_steps={self.oracle_steps!r} must be a whole number >= 0")
        if (
            isinstance(self.image_offset, bool)
            or not isinstance(self.image_offset, int)
            or self.image_offset < 0
        ):
            raise ValueError(f"image_offset={self.image_offset!r} must be a whole number >= 0")
        if not 2 <= self.num_images or not 2 <= self.batch_size <= self.num_images:
            raise ValueError(
                f"need 2 <= batch_size <= num_images, got batch_size={self.batch_size}, "
                f"num_images={self.num_images}"
            )
        if self.extra_starts and self.start_steps < 1:
            raise ValueError("coloc.extra_starts needs coloc.start_steps >= 1 (how long every start trains)")
        try:  # the starts and the bounds agree (cheap: the net is tiny)
            for scale, *translation in [(self.init_scale, *self.init_translation), *self.extra_starts]:
                colocalisation_transformer(
                    scale, translation, scale_range=self.scale_range, inside=self.inside
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
        return self.cell_name(self.data, self.synthetic, self.digit, self.negatives_label, self.oracle_steps)

    @property
    def negatives_label(self) -> str:
        return negatives_label(self.negatives, self.window_from)

    @staticmethod
    def cell_name(
        data: str, synthetic: bool, digit: object, negatives: str = "crop", oracle_steps: int = 0
    ) -> str:
        """``<data>[-synthetic][-<negatives>][-oracle<n>]-digit<k>``, ``negatives`` as :func:`negatives_label`
        names it; the default negatives (crop) and no oracle start are not named. An oracle run is a study of
        the loss (it sees the true boxes): its own cell, never a Table 5 one."""
        kind = "" if negatives == "crop" else f"-{negatives}"
        oracle = f"-oracle{oracle_steps}" if oracle_steps else ""
        return f"{data}{'-synthetic' if synthetic else ''}{kind}{oracle}-digit{digit}"


@dataclass
class ColocData:
    """The images of one co-localisation run: the whole data, and the evaluation set."""

    images: Tensor  # uint8 [N, 1, 84, 84] (CPU)
    boxes: Tensor  # float [N, 4] true boxes, (x0, y0, x1, y1) px
    indices: Tensor  # the images' positions in the stored set (the synthetic digits' for synthetic data)
    checksum: str


def load_coloc_data(spec: ColocSpec) -> ColocData:
    """``spec.num_images`` images of class ``spec.digit`` in the stored ``coloc`` / ``coloc_tc`` test set
    (``make data-mnist``), the class's ``image_offset``-th on, with their true boxes; for
    ``data_source="synthetic"`` the same from synthetic digits, placed (and cluttered for TC) by the real
    generator with a fixed seed."""
    wanted = slice(spec.image_offset, spec.image_offset + spec.num_images)
    if spec.synthetic:
        digits = _synthetic_digits()
        chosen = (digits.test_labels == spec.digit).nonzero().squeeze(1)[wanted]
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
        chosen = (stored["labels"] == spec.digit).nonzero().squeeze(1)[wanted]
        _check_enough(chosen, spec, f"the stored set {spec.set_name}")
        images, boxes = stored["images"][chosen], stored["boxes"][chosen].float()
    labels = torch.full((len(chosen),), spec.digit, dtype=torch.int64)
    return ColocData(images.contiguous(), boxes.contiguous(), chosen, set_checksum(images, labels))


def _check_enough(chosen: Tensor, spec: ColocSpec, where: str) -> None:
    if len(chosen) < spec.num_images:
        raise ValueError(
            f"{where} has only {len(chosen)} images of digit {spec.digit} from its {spec.image_offset}-th on; "
            f"lower num_images or image_offset (asked for {spec.num_images} from {spec.image_offset})"
        )


def prepare_coloc_seed(
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
    if embedding.input_side != COLOC_OUTPUT_SIZE:
        raise ValueError(
            f"e() from {embedding_dir} reads {embedding.input_side}x{embedding.input_side} images, but the "
            f"transformer passes on {COLOC_OUTPUT_SIZE}x{COLOC_OUTPUT_SIZE} windows: use a Table 1 CNN of 28 px "
            "digits (data r, p or e), not rts (42 px) or tc (60 px)"
        )
    torch.manual_seed(spec.seed)
    transformer = colocalisation_transformer(
        spec.init_scale, spec.init_translation, scale_range=spec.scale_range, inside=spec.inside
    ).to(device)
    embedding = embedding.to(device)
    images, boxes = data.images.to(device), data.boxes.to(device)
    shown = slice(0, NUM_PICTURES)
    learners: list[ColocLearner] = []  # the picture reads the step count of the learner in use
    others = [
        colocalisation_transformer(scale, translation, scale_range=spec.scale_range, inside=spec.inside).to(
            device
        )
        for scale, *translation in spec.extra_starts
    ]

    def make_learner(settings: TrainSettings) -> ColocLearner | MultiStartLearner:
        candidates = [one_learner(settings, t) for t in [transformer, *others]]
        learners.append(candidates[0])
        if not others:
            return candidates[0]
        return MultiStartLearner(candidates, spec.start_steps, on_choose=record_start)

    def record_start(index: int, mean_losses: list[float]) -> None:
        starts = [[spec.init_scale, *spec.init_translation], *(list(start) for start in spec.extra_starts)]
        record["start_kept"] = {
            "start": starts[index],
            "index": index,
            "mean_losses": [round(loss, 6) for loss in mean_losses],  # over each start's last quarter
        }

    def one_learner(settings: TrainSettings, transformer: SpatialTransformer) -> ColocLearner:
        return ColocLearner(
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
            oracle_boxes=boxes if spec.oracle_steps else None,
            oracle_steps=spec.oracle_steps,
        )

    def figure():
        step = learners[-1].steps if learners else 0
        return boxes_picture(transformer, images[shown], boxes[shown], box_history, step)

    param_count = count_params(transformer)
    paper = coloc_paper_localised(spec.data)
    synthetic = " | SYNTHETIC digits" if spec.synthetic else ""
    record = {
        "experiment": "coloc",
        "data": spec.data,
        "digit": spec.digit,
        "model": "attention_st",
        "transform": "attention",
        "synthetic": spec.synthetic,
        # test_error is the % NOT localised; the paper's 100% localised on T is 0.0 here. TC: a range.
        "paper_error": None if paper["low"] != paper["high"] else 100.0 - paper["high"],
        "paper_localised": paper,
        "choices": coloc_choices(spec),
        "embedding": {
            # table1: a Table 1 CNN on distorted MNIST (the paper's); plain: the CNN on undistorted digits
            "kind": "plain" if embedding_record.get("experiment") == "coloc_embedding" else "table1",
            "data": embedding_record.get("data"),
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
    }
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
        record=record,
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


def coloc_choices(spec: ColocSpec) -> dict[str, Any]:
    """The run's open choices as its record keeps them (``record["choices"]``)."""
    return {
        "num_images": spec.num_images,
        "image_offset": spec.image_offset,
        "images": "num_images of the digit class from its image_offset-th on, in the stored test set's order",
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
        "oracle_steps": spec.oracle_steps,
        "extra_starts": [list(start) for start in spec.extra_starts],
        "start_steps": spec.start_steps,
    }


def refuse_other_finished_run(run_dir: Path, spec: ColocSpec, embedding_dir: Path) -> None:
    """Refuse, naming the fix, a finished run in ``run_dir`` made with other choices or another e().

    The folder is named by the cell (set, class, negatives), not by every choice or by e(), so a finished
    run of an older setup (e.g. ``embedding=plain``, the first default) would otherwise be taken as this
    run and its record reported as this setup's. e() is compared by its weights' checksum. Choices an old
    record lacks (added later, with the old behaviour as their default) are not compared.
    """
    record = read_finished_record(Path(run_dir))
    if record is None:
        return
    theirs, ours = record.get("choices") or {}, json.loads(json.dumps(coloc_choices(spec)))
    differ = [
        f"{key}: {theirs[key]!r} there, {ours[key]!r} here"
        for key in ours
        if key in theirs and theirs[key] != ours[key]
    ]
    their_weights = (record.get("embedding") or {}).get("weights_sha256")
    our_weights = Path(embedding_dir) / WEIGHTS_NAME
    if their_weights and our_weights.is_file() and file_sha256(our_weights) != their_weights:
        differ.append(f"e(): weights {their_weights[:12]}... there, {embedding_dir}'s here")
    if differ:
        raise ValueError(
            f"{run_dir} holds a finished run of {record.get('cell')} seed {record.get('seed')} made with another "
            f"setup ({'; '.join(differ)}): it would be reported as this one. Move that folder away, or give this "
            "setup a runs folder of its own (paths.runs_dir=... or STN_RUNS=...)"
        )


def embedding_dim(embedding: CnnEmbedding, device: torch.device) -> int:
    with torch.no_grad():
        return int(embedding(torch.zeros(1, 1, 28, 28, device=device)).shape[1])


def run_coloc_seed(
    spec: ColocSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    embedding_spec: EmbeddingSpec | None,
    embedding_settings: TrainSettings | None,
    embedding_dir: Path,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    make_embedding_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One co-localisation run in ``run_dir`` (resuming). e(): with ``embedding_spec`` None, the finished
    Table 1 CNN run in ``embedding_dir`` (``embedding=table1``); else the ``plain`` embedding run there,
    trained first if needed. Returns the co-localisation record (or the plain embedding's
    ``{"finished": False, ...}`` if that stopped early)."""
    if embedding_spec is None:
        embedding_record = read_table1_embedding(embedding_dir)
        # A Table 1 CNN trained on fewer images than the paper's protocol makes this a reduced-budget run too.
        spec = replace(
            spec, reduced_budget=spec.reduced_budget or bool(embedding_record.get("reduced_budget"))
        )
    else:
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

    refuse_other_finished_run(run_dir, spec, embedding_dir)

    def prepare(device: torch.device) -> PreparedRun:
        return prepare_coloc_seed(
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
