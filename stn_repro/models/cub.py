"""CUB-200-2011 models (spec Sect. 6): the CNN baseline and the 2x/4x ST-CNN with parallel attention
transformers from one shared localisation net, over the backbones of :mod:`stn_repro.models.backbones`
(BN-Inception by default).

- :class:`CubCNN`: backbone -> dropout 0.7 -> 200-way linear classifier (the paper's baseline).
- :class:`CubSTCNN`: ``N`` attention transformers with the scale fixed at 0.5 (2 parameters each,
  ``(tx, ty)``) sample ``N`` parts of ``part_size`` px from the input; one localisation net predicts all
  ``2N`` parameters (its own backbone without the last pooling -> conv 1x1 128 -> fc 128 -> fc 2N); each
  part goes through its own backbone (all initialised from the same weights); the part features are
  concatenated -> dropout 0.7 -> one 200-way classifier. With 448 px inputs the parts are still sampled at
  224 px, so each part net costs what the CNN's backbone does.

**Convention**: inputs are RGB in ``[0, 1]``; every model normalises for its backbone *after* the
transformers (a zero-padded sample stays black, spec Sect. 1). Transformer coordinates are the suite's
(:mod:`stn_repro.transformers`): normalised ``[-1, 1]``, ``align_corners=False``, (x, y), y down.

**Initial part layout** (:data:`TILINGS`, a choice: the appendix says only that the transformers start
spread over the image). At scale 0.5 each part is a window of half the image's width and height centred at
``(tx, ty)``; the regression layer starts at zero weights with the bias holding these centres:

- 1 part: the centre ``(0, 0)``.
- 2 parts: ``(-0.5, 0)`` and ``(+0.5, 0)``: the left and the right half of the image's middle band
  (rows from 1/4 to 3/4 of the height), side by side, together covering its width.
- 4 parts: ``(-0.5, -0.5)``, ``(+0.5, -0.5)``, ``(-0.5, +0.5)``, ``(+0.5, +0.5)``: the four quadrants
  (top-left, top-right, bottom-left, bottom-right), tiling the image exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn_repro.models.backbones import (
    BN_INCEPTION_STEP,
    DEFAULT_CONVENTION,
    Normalise,
    WeightsReport,
    build_backbone,
    load_backbone_weights,
)
from stn_repro.transformers import ALIGN_CORNERS, Attention, RegressionHead, SpatialTransformer

NUM_CLASSES = 200
PART_SCALE = 0.5  # the appendix: attention transformers with the scale fixed at 0.5
CUB_MODEL_KINDS = ("cnn", "st_cnn")

TILINGS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.0, 0.0),),
    2: ((-0.5, 0.0), (0.5, 0.0)),
    4: ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)),
}


# --- BN-Inception ------------------------------------------------------------------------------------------


# --- loading ImageNet weights ----------------------------------------------------------------------------------


# --- the models -------------------------------------------------------------------------------------------------


class CubCNN(nn.Module):
    """The baseline: normalise -> backbone (pooled features) -> dropout -> linear classifier."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.7,
        convention: str = "imagenet",
    ):
        super().__init__()
        self.normalise = Normalise(convention)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.out_channels, num_classes)

    def backbones(self) -> list[nn.Module]:
        return [self.backbone]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.backbone(self.normalise(x))))


class CubLocalisation(nn.Module):
    """The shared localisation net: normalise -> backbone without its last pooling -> conv 1x1 ``channels``
    -> ReLU -> fc ``hidden`` -> ReLU -> regression layer (zero weights, bias = the initial ``2N`` part
    centres)."""

    def __init__(
        self,
        backbone: nn.Module,
        input_size: int,
        initial: Tensor,
        channels: int = 128,
        hidden: int = 128,
        convention: str = "imagenet",
    ):
        super().__init__()
        self.normalise = Normalise(convention)
        self.backbone = backbone
        self.reduce = nn.Conv2d(backbone.out_channels, channels, 1)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            maps = backbone.features(torch.zeros(1, 3, input_size, input_size))
        backbone.train(was_training)
        self.map_size = tuple(maps.shape[-2:])
        self.fc = nn.Linear(channels * maps.shape[-2] * maps.shape[-1], hidden)
        self.head = RegressionHead(hidden, initial)

    def forward(self, x: Tensor) -> Tensor:
        maps = F.relu(self.reduce(self.backbone.features(self.normalise(x))), inplace=True)
        return self.head(F.relu(self.fc(maps.flatten(1)), inplace=True))


class CubSTCNN(nn.Module):
    """The 2x/4x ST-CNN: ``num_parts`` attention transformers (scale fixed at ``scale``) predicted together
    by one :class:`CubLocalisation` (reachable as ``self.transformer.localisation``, so the optimiser gives
    it the localisation learning rate), each part ``[part_size, part_size]`` through its own backbone, the
    part features concatenated -> dropout -> one linear classifier.

    ``make_backbone()`` builds each backbone (the localisation net's and the parts'); ``tiling`` (default
    :data:`TILINGS`) the initial part centres ``[(tx, ty), ...]``.
    """

    def __init__(
        self,
        make_backbone: Callable[[], nn.Module],
        num_parts: int,
        input_size: int,
        part_size: int,
        *,
        num_classes: int = NUM_CLASSES,
        dropout: float = 0.7,
        scale: float = PART_SCALE,
        tiling: Sequence[Sequence[float]] | None = None,
        convention: str = "imagenet",
        loc_channels: int = 128,
        loc_hidden: int = 128,
    ):
        super().__init__()
        if tiling is None:
            if num_parts not in TILINGS:
                raise ValueError(
                    f"no default tiling for {num_parts} parts (known: {sorted(TILINGS)}); give tiling"
                )
            tiling = TILINGS[num_parts]
        initial = torch.tensor([[float(v) for v in centre] for centre in tiling], dtype=torch.float32)
        if initial.shape != (num_parts, 2):
            raise ValueError(f"tiling needs {num_parts} (tx, ty) centres, got {initial.tolist()}")
        self.num_parts, self.input_size, self.part_size = num_parts, input_size, part_size
        self.register_buffer("tiling", initial, persistent=False)
        localisation = CubLocalisation(
            make_backbone(), input_size, initial.reshape(-1), loc_channels, loc_hidden, convention
        )
        self.transformer = SpatialTransformer(
            localisation, Attention(scale=scale), (part_size, part_size), num_transforms=num_parts
        )
        self.normalise = Normalise(convention)
        self.parts = nn.ModuleList(make_backbone() for _ in range(num_parts))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(sum(p.out_channels for p in self.parts), num_classes)

    def backbones(self) -> list[nn.Module]:
        return [self.transformer.localisation.backbone, *self.parts]

    def sample_parts(self, x: Tensor) -> Tensor:
        """The parts ``[B, N, 3, part_size, part_size]`` of ``x`` in ``[0, 1]`` (zero padding: black)."""
        return self.transformer(x)

    def forward(self, x: Tensor) -> Tensor:
        parts = self.sample_parts(x)
        features = [net(self.normalise(parts[:, k])) for k, net in enumerate(self.parts)]
        return self.classifier(self.dropout(torch.cat(features, 1)))


def part_boxes(
    params: Tensor, image_size: int, scale: float = PART_SCALE, align_corners: bool = ALIGN_CORNERS
) -> Tensor:
    """The pixel boxes ``(x0, y0, x1, y1)`` that attention windows ``params [..., 2]`` (``(tx, ty)``, scale
    fixed) sample from a square ``image_size`` image, ``[..., 4]``.

    With ``align_corners=False`` (the suite's) the output's edges ``+-1`` map to ``t +- scale``, and
    normalised ``u`` is pixel position ``(u + 1) * S / 2``; with ``True`` corner-pixel centres sit at ``+-1``
    (the box is then given by those centres, half a pixel inside the sampled area's edge).
    """
    params = params.float()
    lo, hi = params - scale, params + scale
    if align_corners:
        lo, hi = (lo + 1) * (image_size - 1) / 2 + 0.5, (hi + 1) * (image_size - 1) / 2 + 0.5
    else:
        lo, hi = (lo + 1) * image_size / 2, (hi + 1) * image_size / 2
    return torch.stack([lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]], dim=-1)


# --- building from a config ----------------------------------------------------------------------------------


@dataclass
class CubModelInfo:
    kind: str
    backbone: str
    width: float
    num_parts: int
    input_size: int
    part_size: int | None
    feature_dim: int
    param_count: int
    localisation_params: int
    convention: str
    tiling: list[list[float]] | None
    pretrained: dict[str, Any] | None  # the weights report, or None: trained from scratch


def build_cub_model(
    kind: str,
    *,
    backbone: str = "bn_inception",
    width: float = 1.0,
    input_size: int = 224,
    part_size: int = 224,
    num_parts: int = 2,
    num_classes: int = NUM_CLASSES,
    dropout: float = 0.7,
    scale: float = PART_SCALE,
    tiling: Sequence[Sequence[float]] | None = None,
    input_convention: str | None = None,
    loc_channels: int = 128,
    loc_hidden: int = 128,
    weights: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, CubModelInfo]:
    """A CUB model (``kind``: ``cnn`` or ``st_cnn``) and what describes it; ``weights`` (a local ImageNet
    state dict for ``backbone``) initialises every backbone (the CNN's, or the localisation net's and each
    part net's), else they train from scratch."""
    if kind not in CUB_MODEL_KINDS:
        raise ValueError(f"unknown CUB model {kind!r}; known: {', '.join(CUB_MODEL_KINDS)}")
    sides = (input_size, part_size) if kind == "st_cnn" else (input_size,)
    if backbone == "bn_inception" and any(side < 32 or side % BN_INCEPTION_STEP for side in sides):
        # Its stride-2 modules (3c, 4e) concatenate a stride-2 convolution with a ceil-mode max pooling,
        # which agree in size only on even maps.
        raise ValueError(
            f"BN-Inception needs input sides that are multiples of {BN_INCEPTION_STEP} px, got "
            f"{', '.join(map(str, sides))} px; use trainer.part_size=224, 96, 64 or 32"
        )
    first = build_backbone(backbone, width)
    report = None
    if weights is not None:
        report = load_backbone_weights(first, weights)
        log(f"backbone {backbone}: {report.summary()}")
    convention = input_convention_for(backbone, input_convention, report, log)
    spare = [first]

    def make_backbone() -> nn.Module:  # every copy starts from the same (loaded or initialised) weights
        return spare.pop() if spare else copy.deepcopy(first)

    if kind == "cnn":
        model: nn.Module = CubCNN(make_backbone(), num_classes, dropout, convention)
        parts, loc_params, used_tiling, used_part = 0, 0, None, None
    else:
        model = CubSTCNN(
            make_backbone,
            num_parts,
            input_size,
            part_size,
            num_classes=num_classes,
            dropout=dropout,
            scale=scale,
            tiling=tiling,
            convention=convention,
            loc_channels=loc_channels,
            loc_hidden=loc_hidden,
        )
        parts = num_parts
        loc_params = sum(p.numel() for p in model.transformer.localisation.parameters())
        used_tiling, used_part = model.tiling.tolist(), part_size
    info = CubModelInfo(
        kind=kind,
        backbone=backbone,
        width=width,
        num_parts=parts,
        input_size=input_size,
        part_size=used_part,
        feature_dim=model.classifier.in_features,
        param_count=sum(p.numel() for p in model.parameters()),
        localisation_params=loc_params,
        convention=convention,
        tiling=used_tiling,
        pretrained=None if report is None else asdict(report),
    )
    return model, info


@torch.no_grad()
def input_convention_for(
    backbone: str, given: str | None, report: WeightsReport | None, log: Callable[[str], None] = print
) -> str:
    """How inputs are normalised for ``backbone``: ``given`` (``model.input_convention``) where set; else the
    one its weights file says (:func:`~stn_repro.models.backbones.weights_convention`), else, from scratch,
    the backbone's default. Pretrained weights whose convention cannot be told are refused: normalised the
    wrong way they load, train and mislead (the Caffe BN-Inception port reads BGR 0-255, not ImageNet RGB)."""
    told = report.convention if report is not None else None
    if given is not None:
        if told is not None and told != given:
            log(
                f"WARNING: model.input_convention={given} while {report.path} looks trained with {told}: "
                "inputs are normalised as you set"
            )
        return given
    if report is None or (report.source == "cub_cnn" and told is None):
        return DEFAULT_CONVENTION.get(backbone, "imagenet")
    if told is None:
        raise ValueError(
            f"cannot tell which input convention the weights {report.path} were trained with (their keys match "
            f"no known port); fix: set model.input_convention=caffe_bgr (the Caffe BN-Inception port: BGR, "
            "0-255, minus its mean) or imagenet (RGB, ImageNet mean and std), whichever the file's source states"
        )
    log(f"backbone {backbone}: input convention {told}, as its weights were trained")
    return told


def sample_parts(model: CubSTCNN, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(parts [B, N, 3, P, P], params [B, N, 2])`` of ``images`` in ``[0, 1]``, in eval mode."""
    was_training = model.training
    model.eval()
    parts = model.sample_parts(images)
    params = model.transformer.last_params
    model.train(was_training)
    return parts, params


def part_figure(model: CubSTCNN, images: Tensor, titles: list[str] | None = None):
    """The part boxes of every transformer drawn on each test image, beside the parts they sample (the
    paper's Table 3, right). ``images [B, 3, S, S]`` in ``[0, 1]``."""
    import matplotlib.pyplot as plt

    from stn_repro.viz import GRID_COLOURS

    parts, params = sample_parts(model, images)
    boxes = part_boxes(params.cpu(), images.shape[-1], model.transformer.family.scale)
    images, parts = images.detach().cpu(), parts.detach().cpu()
    rows, n = images.shape[0], model.num_parts
    fig, axes = plt.subplots(rows, 1 + n, figsize=(1.6 * (1 + n), 1.6 * rows + 0.3), squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        size = images.shape[-1]
        for k in range(n):
            x0, y0, x1, y1 = boxes[i, k].tolist()
            colour = GRID_COLOURS[k % len(GRID_COLOURS)]
            # Pixel (i, j) covers [j, j + 1): its centre is at j + 0.5, which imshow draws at j.
            axes[i, 0].add_patch(
                plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, linewidth=1.5)
            )
            axes[i, 1 + k].imshow(parts[i, k].permute(1, 2, 0).clamp(0, 1).numpy())
            if i == 0:
                axes[i, 1 + k].set_title(f"part {k + 1}", fontsize=7, color=colour)
        axes[i, 0].set_xlim(-0.5, size - 0.5)
        axes[i, 0].set_ylim(size - 0.5, -0.5)
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
