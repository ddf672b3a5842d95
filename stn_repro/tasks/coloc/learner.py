"""Co-localisation training (Appendix A.2): the unsupervised hinge loss over pairs and the learner that
:func:`~stn_repro.training.loop.run_training` drives with it.

No labels: for images ``I_n`` of one digit class, an attention transformer ``T`` is trained so that the
frozen embedding ``e()`` of its crops agree with each other more than with a random crop of the same image,
``max(0, ||e(T(I_n)) - e(T(I_m))||^2 - ||e(T(I_n)) - e(I_n^rand)||^2 + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn_repro.models.coloc import COLOC_OUTPUT_SIZE, attention_boxes, box_iou
from stn_repro.seeding import EpochOrder, derive_seed
from stn_repro.training.settings import TrainSettings
from stn_repro.transformers import SpatialTransformer, get_transform, sample

IOU_THRESHOLD = 0.5  # a localisation is correct when its IoU with the true box exceeds this (the paper)
OPTIMIZERS = ("adam", "sgd")
# What I_n^rand is (the paper says only "a random crop of I_n"): ``crop``, a fixed-size pixel crop
# (:func:`random_crops`), or ``window``, a window of the transformer's own scale at a random place inside the
# image, resampled to its output size (:func:`random_windows`); ``crop_then_window``, crops for the first
# ``window_from`` steps and windows after: crops draw the windows onto the digits (too wide), windows then
# shrink them to the digit's size (the loss with window negatives is lowest near the true box, but from a
# whole-image start it slides to an empty corner first). The optimiser starts afresh at the switch: Adam's
# second moments from the converged crop phase are small, so the new loss's first gradients would take
# steps many times the learning rate (measured on digit 5 of T, window_from=1000 of 2000: 41% localised
# without the restart, 56% with it).
NEGATIVES = ("crop", "window", "crop_then_window")


def negatives_label(negatives: str, window_from: int | None = None) -> str:
    """The name of a negatives choice in cell names and tables: ``negatives``, with the switch step for
    ``crop_then_window`` (``crop_then_window1000``)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}; known: {', '.join(NEGATIVES)}")
    if negatives != "crop_then_window":
        return negatives
    if isinstance(window_from, bool) or not isinstance(window_from, int) or window_from < 0:
        raise ValueError(
            f"negatives=crop_then_window needs the step of the switch, window_from >= 0, got {window_from!r}"
        )
    return f"crop_then_window{window_from}"


def colocalisation_hinge(z: Tensor, r: Tensor, margin: float = 1.0) -> Tensor:
    """The paper's hinge loss, averaged over every ordered pair ``(n, m)``, ``n != m``, of the batch.

    ``z [B, D]`` are ``e(T(I_n))``, ``r [B, D]`` are ``e(I_n^rand)`` (same order); the loss of a pair is
    ``max(0, ||z_n - z_m||^2 - ||z_n - r_n||^2 + margin)``. Returns a 0-d float32 tensor. The squared
    distances are computed in float64 (the Gram form ``|a|^2 + |b|^2 - 2 a.b`` would lose digits in
    float32 for embeddings of large norm).
    """
    if z.dim() != 2 or z.shape != r.shape:
        raise ValueError(f"z and r must both be [B, D], got {tuple(z.shape)} and {tuple(r.shape)}")
    batch = z.shape[0]
    if batch < 2:
        raise ValueError(f"the pair loss needs at least two images per batch, got {batch}")
    z64, r64 = z.double(), r.double()
    squared = (z64 * z64).sum(1)
    pair = (squared[:, None] + squared[None, :] - 2.0 * z64 @ z64.T).clamp(min=0.0)  # ||z_n - z_m||^2
    negative = (z64 - r64).pow(2).sum(1)  # ||z_n - r_n||^2
    hinge = F.relu(pair - negative[:, None] + margin)
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=z.device)
    return hinge[off_diagonal].mean().float()


def random_crops(images: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One ``size x size`` crop of each image at a uniformly random whole-pixel offset (``I_n^rand``).

    ``images [B, C, H, W]``; returns the crops ``[B, C, size, size]`` (on the images' device) and the
    offsets ``[B, 2]`` as ``(x0, y0)`` px (CPU), drawn from ``generator`` (a CPU generator: the same offsets
    on every device).
    """
    batch, _, height, width = images.shape
    if not (0 < size <= min(height, width)):
        raise ValueError(f"crop size {size} does not fit {height}x{width} images")
    x0 = torch.randint(0, width - size + 1, (batch,), generator=generator)
    y0 = torch.randint(0, height - size + 1, (batch,), generator=generator)
    steps = torch.arange(size)
    rows = (y0[:, None] + steps).to(images.device)  # [B, size]
    cols = (x0[:, None] + steps).to(images.device)
    which = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: the result is [B, size, size, C].
    crops = images[which, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return crops.contiguous(), torch.stack([x0, y0], dim=1)


def random_negatives(images: Tensor, crop_size: int, output_side: int, generator: torch.Generator) -> Tensor:
    """``I_n^rand`` as the ``crop`` negatives: a ``crop_size`` crop of each image at a random place, as e()
    reads it (``output_side`` px): the pixels themselves (:func:`random_crops`) where the sizes agree, else a
    window of side ``crop_size`` resampled to ``output_side`` (:func:`random_windows`)."""
    if crop_size == output_side:
        return random_crops(images, crop_size, generator)[0]
    if not 0 < crop_size <= images.shape[-1]:
        raise ValueError(f"crop size {crop_size} does not fit {images.shape[-1]} px images")
    scales = torch.full((images.shape[0],), crop_size / images.shape[-1])
    return random_windows(images, scales, output_side, generator)


def random_windows(images: Tensor, scales: Tensor, output_side: int, generator: torch.Generator) -> Tensor:
    """One attention window of each image at its given scale and a uniformly random place inside the image,
    resampled to ``output_side x output_side`` (``I_n^rand`` when :data:`NEGATIVES` is ``window``).

    **Convention**: attention parameters ``(s, tx, ty)`` in normalised coordinates, ``align_corners=False``
    (:func:`~stn_repro.models.coloc.attention_boxes`): the window spans ``[t - s, t + s]`` of the image's
    ``[-1, 1]``, so ``t`` is drawn uniformly from ``[-(1 - s), 1 - s]`` per axis (0 where ``s >= 1``).
    ``images [B, C, H, W]``, ``scales [B]``; returns ``[B, C, output_side, output_side]``. The offsets are drawn
    from ``generator`` (a CPU generator: the same windows on every device).
    """
    batch = images.shape[0]
    if scales.shape != (batch,):
        raise ValueError(f"need one scale per image, [{batch}], got {tuple(scales.shape)}")
    room = (1.0 - scales.detach().float().cpu()).clamp(min=0.0)
    centres = (2.0 * torch.rand(batch, 2, generator=generator) - 1.0) * room[:, None]
    params = torch.cat([scales.detach().float().cpu()[:, None], centres], dim=1).to(images.device)
    family = get_transform("attention")
    grid = family.grid(params, (output_side, output_side))
    return sample(images, grid, align_corners=family.align_corners)


@torch.no_grad()
def predicted_boxes(transformer: SpatialTransformer, images: Tensor, batch_size: int = 1_000) -> Tensor:
    """The pixel boxes ``[N, 4]`` the transformer samples for ``images`` (uint8 or float ``[N, 1, S, S]``)."""
    was_training = transformer.training
    transformer.eval()
    boxes = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        params = transformer.localisation(batch)
        boxes.append(
            attention_boxes(
                params, images.shape[-1], _output_side(transformer), transformer.family.align_corners
            )
        )
    transformer.train(was_training)
    return torch.cat(boxes)


def localisation_error(
    transformer: SpatialTransformer, images: Tensor, true_boxes: Tensor, batch_size: int = 1_000
) -> float:
    """% of ``images`` *not* localised: predicted box IoU with ``true_boxes`` at most :data:`IOU_THRESHOLD`."""
    iou = box_iou(predicted_boxes(transformer, images, batch_size), true_boxes)
    return 100.0 * (iou <= IOU_THRESHOLD).sum().item() / images.shape[0]


def box_centred_windows(boxes: Tensor, scale: float, image_size: int, shift_px: float = 0.0) -> Tensor:
    """Attention parameters ``(s, tx, ty)`` ``[N, 3]`` of windows of side ``scale * image_size`` px centred on
    each box's centre (``boxes [N, 4]``, pixel ``(x0, y0, x1, y1)``), moved right and down by ``shift_px``.

    **Convention**: as :func:`~stn_repro.models.coloc.attention_boxes` with ``align_corners=False``, whose
    inverse this is: pixel position ``p`` is normalised ``2 p / S - 1``. ``scale = 1/3`` on an 84 px image is
    a 28 px window: the true box of a T digit.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]).double() / 2 + shift_px
    params = torch.cat([torch.full_like(centre[:, :1], float(scale)), 2 * centre / image_size - 1], dim=1)
    return params.float()


@torch.no_grad()
def hinge_at_windows(
    embedding: nn.Module,
    images: Tensor,
    windows: dict[str, Tensor],
    *,
    crop_size: int = COLOC_OUTPUT_SIZE,
    seed: int = 0,
    margin: float = 1.0,
    negatives: str = "crop",
) -> dict[str, float]:
    """The co-localisation loss if the transformer chose the given windows: a diagnostic of the loss itself.

    ``images [N, 1, S, S]`` (uint8 or float in [0, 1]); ``windows`` maps a name to attention parameters
    ``[N, 3]`` (one window per image, e.g. from :func:`box_centred_windows`). Every window is scored against
    random negatives drawn from ``seed`` (``crop``: the same crops for every window; ``window``: windows of
    each window's own scale at the same random places), over all ordered pairs of the ``N`` images, as
    :class:`ColocLearner` scores a step. Where the true boxes do not have the lowest loss, no optimiser of
    this loss can be expected to find them.
    """
    if negatives not in ("crop", "window"):
        raise ValueError(f"unknown negatives {negatives!r}; known here: crop, window")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    family = get_transform("attention")
    crops, _ = random_crops(x, crop_size, torch.Generator().manual_seed(seed))
    crop_embeddings = embedding(crops)
    losses = {}
    for name, params in windows.items():
        params = params.to(x.device, torch.float32)
        grid = family.grid(params, (crop_size, crop_size))
        views = sample(x, grid, align_corners=family.align_corners)
        if negatives == "window":
            generator = torch.Generator().manual_seed(seed)
            r = embedding(random_windows(x, params[:, 0], crop_size, generator))
        else:
            r = crop_embeddings
        losses[name] = colocalisation_hinge(embedding(views), r, margin).item()
    return losses


def make_coloc_optimizer(
    transformer: nn.Module, settings: TrainSettings, name: str = "adam"
) -> torch.optim.Optimizer:
    """The transformer's optimiser: ``adam`` (default betas; ``settings.momentum`` is unused) or ``sgd``
    (with ``settings.momentum``). Every parameter belongs to the localisation net, so the one group carries
    ``lr_scale = settings.localisation_lr_multiplier`` (the loop sets ``lr = settings.lr_at(i) * lr_scale``)."""
    groups = [{"params": list(transformer.parameters()), "lr_scale": settings.localisation_lr_multiplier}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    raise ValueError(f"unknown co-localisation optimiser {name!r}; known: {', '.join(OPTIMIZERS)}")


class ColocLearner:
    """The :class:`~stn_repro.training.loop.Learner` of one co-localisation optimisation.

    ``images`` (``[N, 1, S, S]``, uint8 or float in [0, 1], on the training device) are the whole data. Each
    ``step()`` takes the next ``batch_size`` of them (seeded per-epoch permutations, so with ``batch_size
    = N`` every step sees every image), a random negative of each (``I_n^rand``: a ``crop_size`` crop, or
    with ``negatives="window"`` a window of the transformer's current scale for that image, and with
    ``"crop_then_window"`` crops before step ``window_from`` and windows from it on, with the optimiser's
    state cleared at the switch, see :data:`NEGATIVES`), and one optimiser step on
    :func:`colocalisation_hinge` over all ordered pairs of the batch. ``embedding`` (e(), frozen) is not
    trained and not saved here. ``evaluate`` returns, per evaluation set ``(images, true boxes)``,
    the % of images not localised (:func:`localisation_error`). Everything random comes from ``seed``
    (batch order and crop offsets; the loop saves the global RNG too), so a resumed run is exact.
    """

    num_models = 1

    def __init__(
        self,
        transformer: SpatialTransformer,
        embedding: nn.Module,
        images: Tensor,
        settings: TrainSettings,
        *,
        batch_size: int,
        seed: int,
        margin: float = 1.0,
        crop_size: int = COLOC_OUTPUT_SIZE,
        optimizer: str = "adam",
        negatives: str = "crop",
        window_from: int | None = None,
        oracle_boxes: Tensor | None = None,
        oracle_steps: int = 0,
    ):
        count = images.shape[0]
        if oracle_steps and (oracle_boxes is None or oracle_boxes.shape != (count, 4)):
            raise ValueError(
                f"oracle_steps={oracle_steps} needs the true boxes of the {count} images, [{count}, 4]"
            )
        self.oracle_steps = int(oracle_steps)
        # The attention parameters of each true box (what box_centred_windows gives at the box's own scale).
        self._oracle_params = None if not oracle_steps else _box_params(oracle_boxes, images.shape[-1])
        negatives_label(negatives, window_from)  # checks both
        self.negatives, self.window_from = negatives, window_from
        self.steps = 0  # steps taken (crop_then_window switches on it; checkpointed)
        if not 2 <= batch_size <= count:
            raise ValueError(f"batch_size={batch_size} must lie in [2, {count}] (the number of images)")
        self.transformer, self.embedding = transformer, embedding
        self.images = images.float() / 255.0 if images.dtype == torch.uint8 else images
        self.batch_size, self.images_per_step = int(batch_size), int(batch_size)
        self.margin, self.crop_size = float(margin), int(crop_size)
        self.device = images.device
        self.optimizer = make_coloc_optimizer(transformer, settings, optimizer)
        self.seed = int(seed)
        self._order = EpochOrder(count, derive_seed(self.seed, "coloc-batches"), self.device)
        self._generator = torch.Generator().manual_seed(derive_seed(self.seed, "coloc-crops"))
        self.transformer.train()

    def step(self) -> Tensor:
        chosen = self._order.take(self.batch_size)
        x = self.images[chosen]
        if self.steps < self.oracle_steps:
            return self._oracle_step(x, self._oracle_params[chosen])
        views = self.transformer(x)
        windows = self.negatives == "window" or (
            self.negatives == "crop_then_window" and self.steps >= self.window_from
        )
        with torch.no_grad():
            if windows:  # at the scale each image's window has now
                scales = self.transformer.last_params[:, 0]
                r = self.embedding(random_windows(x, scales, views.shape[-1], self._generator))
            else:
                r = self.embedding(random_negatives(x, self.crop_size, views.shape[-1], self._generator))
        z = self.embedding(views)
        loss = colocalisation_hinge(z, r, self.margin)
        switch = self.negatives == "crop_then_window" and self.steps == self.window_from
        if switch or (self.oracle_steps and self.steps == self.oracle_steps):
            self.optimizer.state.clear()  # a new loss, a fresh optimiser (see NEGATIVES); a no-op at step 0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return loss.detach().reshape(1)

    def _oracle_step(self, x: Tensor, target: Tensor) -> Tensor:
        loss = F.mse_loss(self.transformer.localisation(x), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return loss.detach().reshape(1)

    def export(self) -> None:
        pass  # the transformer is trained in place

    def evaluate(
        self, eval_sets: dict[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]:
        return [
            {
                name: localisation_error(self.transformer, images, boxes, batch_size)
                for name, (images, boxes) in eval_sets.items()
            }
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "transformer": self.transformer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order": {"epoch": self._order.epoch, "position": self._order.position},
            "generator": self._generator.get_state(),
            "seed": self.seed,
            "num_images": self.images.shape[0],
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("num_images", self.images.shape[0])):
            if state.get(key) != mine:
                raise ValueError(
                    f"the checkpoint is of a co-localisation run with {key}={state.get(key)!r}, this one has "
                    f"{mine!r}: it belongs to another run; delete it or point the run elsewhere"
                )
        self.transformer.load_state_dict(state["transformer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._order.load(state["order"]["epoch"], state["order"]["position"])
        self._generator.set_state(state["generator"].cpu())
        self.steps = state.get("steps", 0)


def _box_params(boxes: Tensor, image_size: int) -> Tensor:
    """Attention parameters ``(s, tx, ty)`` ``[N, 3]`` of windows equal to the (square) boxes ``[N, 4]``."""
    side = (boxes[:, 2:] - boxes[:, :2]).float().mean(1, keepdim=True)
    centre = (boxes[:, :2] + boxes[:, 2:]).float() / 2
    return torch.cat([side / image_size, 2 * centre / image_size - 1], dim=1)


def _output_side(transformer: SpatialTransformer) -> int:
    return transformer.output_size[1] if transformer.output_size is not None else COLOC_OUTPUT_SIZE


@dataclass(frozen=True)
class Localisation:
    """What a co-localisation record's ``test_error`` counts (it has no classifier objective): the % of the
    images whose predicted box has IoU at most :data:`IOU_THRESHOLD` with the true box."""

    name: str = "localisation"
    error_name: str = "% not localised (IoU <= 0.5)"


LOCALISATION = Localisation()


class MultiStartLearner:
    """Several starts, the lowest loss kept: ``candidates`` (one :class:`ColocLearner` each, the same images,
    settings and seed, transformers that differ only in where they start) all train for ``start_steps``
    steps; then the one with the lowest mean loss over the last quarter of those steps is copied, with its
    optimiser's state, into the first candidate (whose transformer is the run's model), and only it trains
    on. Costs ``len(candidates) x start_steps`` steps more than one start. ``on_choose(index, mean_losses)``
    is told the choice (the candidate's index and every candidate's mean loss over the last quarter), also
    when a resumed run had made it before."""

    num_models = 1

    def __init__(
        self,
        candidates: list[ColocLearner],
        start_steps: int,
        on_choose: Callable[[int, list[float]], None] | None = None,
    ):
        if len(candidates) < 2 or start_steps < 1:
            raise ValueError("several starts need at least two candidates and start_steps >= 1")
        self.candidates, self.start_steps = candidates, int(start_steps)
        self.on_choose = on_choose
        self.images_per_step = candidates[0].images_per_step
        self.device = candidates[0].device
        self.steps, self.chosen = 0, None
        self._recent = [0.0] * len(candidates)  # loss sums over the last quarter of the start phase
        self.transformer = candidates[0].transformer

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.candidates[0].optimizer  # the loop sets its lr; step() passes it on

    def step(self) -> Tensor:
        if self.chosen is not None:
            loss = self.candidates[0].step()
            self.steps += 1
            return loss
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        losses = []
        for candidate in self.candidates:
            for group, lr in zip(candidate.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            losses.append(candidate.step())
        self.steps += 1
        if self.steps > self.start_steps - max(1, self.start_steps // 4):
            self._recent = [total + float(loss) for total, loss in zip(self._recent, losses, strict=True)]
        if self.steps == self.start_steps:
            self._choose()
        return torch.stack(losses).min().reshape(1)

    def _choose(self) -> None:
        self.chosen = min(range(len(self.candidates)), key=self._recent.__getitem__)
        if self.chosen:
            self.candidates[0].load_state_dict(self.candidates[self.chosen].state_dict())
        self.candidates = self.candidates[:1]
        self._tell_choice()

    def _tell_choice(self) -> None:
        if self.on_choose is not None:
            quarter = max(1, self.start_steps // 4)
            self.on_choose(self.chosen, [total / quarter for total in self._recent])

    def export(self) -> None:
        pass

    def evaluate(
        self, eval_sets: dict[str, tuple[Tensor, Tensor]], batch_size: int
    ) -> list[dict[str, float]]:
        return self.candidates[0].evaluate(eval_sets, batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "chosen": self.chosen,
            "recent": list(self._recent),
            "candidates": [candidate.state_dict() for candidate in self.candidates],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.chosen, self._recent = state["steps"], state["chosen"], list(state["recent"])
        if self.chosen is not None:
            self.candidates = self.candidates[:1]
        for candidate, saved in zip(self.candidates, state["candidates"], strict=True):
            candidate.load_state_dict(saved)
        if self.chosen is not None:
            self._tell_choice()
