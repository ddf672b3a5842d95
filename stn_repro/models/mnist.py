"""The distorted-MNIST classifiers of Sect. 4.1 / Appendix A.4: FCN, CNN, ST-FCN and ST-CNN.

Every classifier has three weight layers (ReLU, softmax on top). The spatial transformer variants put one
transformer at the very start; for RTS and TC its output is average-pooled by 2 before the classifier.
Widths are solved from a parameter budget so that all models of one experiment have the same number of
learnable parameters (the paper: "about 400k"), the transformer's localisation net included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stn_repro.models.cpu_conv import CpuConv2d
from stn_repro.transformers import SpatialTransformer, cnn_localisation, get_transform, mlp_localisation

MODEL_KINDS = ("fcn", "cnn", "st_fcn", "st_cnn")
# The paper's width ranges (appendix); the budget solver reports whether a width falls inside them.
PAPER_WIDTH_RANGE = {"fcn": (128, 256), "cnn": (32, 64)}


class FCN(nn.Sequential):
    """Two hidden fully connected ReLU layers and a classification layer (three weight layers)."""

    def __init__(self, in_shape: Sequence[int], widths: Sequence[int], num_classes: int = 10):
        if len(widths) != 2:
            raise ValueError(f"the FCN has two hidden layers, got widths {list(widths)}")
        c, h, w = in_shape
        super().__init__(
            nn.Flatten(),
            nn.Linear(c * h * w, widths[0]),
            nn.ReLU(inplace=True),
            nn.Linear(widths[0], widths[1]),
            nn.ReLU(inplace=True),
            nn.Linear(widths[1], num_classes),
        )


class CNN(nn.Sequential):
    """conv 9x9 -> max-pool 2 -> conv 7x7 -> max-pool 2 -> classification layer (three weight layers).

    ``padding="valid"`` is the paper's (stride 1, no padding). ``"same"`` keeps the size through each conv;
    it is needed where the input is too small for the valid layout (the 21x21 pooled RTS transformer output).
    """

    def __init__(
        self, in_shape: Sequence[int], widths: Sequence[int], num_classes: int = 10, padding: str = "valid"
    ):
        if len(widths) != 2:
            raise ValueError(f"the CNN has two conv layers, got widths {list(widths)}")
        if padding not in ("valid", "same"):
            raise ValueError(f"CNN padding must be 'valid' or 'same', got {padding!r}")
        pads = (0, 0) if padding == "valid" else (4, 3)
        c, h, w = in_shape
        size_h, size_w = h, w
        for kernel, pad in zip((9, 7), pads, strict=True):
            size_h, size_w = (size_h + 2 * pad - kernel + 1) // 2, (size_w + 2 * pad - kernel + 1) // 2
        if size_h < 1 or size_w < 1:
            raise ValueError(
                f"a {h}x{w} input is too small for the CNN's valid 9x9 and 7x7 convolutions; use padding='same'"
            )
        super().__init__(
            # Pooling before the ReLU computes the same values and gradients (a ReLU commutes with a max)
            # on a quarter of the elements: less memory traffic, which bounds these small layers on a GPU.
            # Out of place: in place on a pooled output makes vmap (stacked seeds) copy it.
            # CpuConv2d: the same numbers as nn.Conv2d, with the gradients that oneDNN computes slowly here
            # (the one-channel input gradient behind a transformer, the weight gradient of a 4x4 or 5x5
            # output) as operators several times faster on a CPU (cpu_conv).
            CpuConv2d(c, widths[0], 9, padding=pads[0]),
            nn.MaxPool2d(2),
            nn.ReLU(),
            CpuConv2d(widths[0], widths[1], 7, padding=pads[1]),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(widths[1] * size_h * size_w, num_classes),
        )
        self.in_shape = (int(c), int(h), int(w))  # what the classification layer's size fixes


class TransformedClassifier(nn.Module):
    """An optional spatial transformer, an optional 2x average pool, then a classifier."""

    def __init__(self, classifier: nn.Module, transformer: SpatialTransformer | None = None, pool: int = 1):
        super().__init__()
        self.transformer = transformer
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        if self.transformer is not None:
            x = self.transformer(x)
        return self.classifier(self.pool(x))


@dataclass(frozen=True)
class ModelInfo:
    """What was built: recorded beside every result."""

    kind: str
    transform: str | None
    widths: tuple[int, ...]
    param_count: int
    param_budget: int
    localisation_params: int
    in_paper_width_range: bool


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@dataclass
class _Parts:
    """What a Table 1 model is made of, before its width is known."""

    base: str  # "fcn" or "cnn": the classifier
    transformer: SpatialTransformer | None
    pool: int
    make_classifier: Callable[[int], nn.Module]

    @property
    def localisation_params(self) -> int:
        return count_params(self.transformer) if self.transformer is not None else 0

    def param_count(self, width: int) -> int:
        with torch.device("meta"):  # count without allocating: the search tries widths in the thousands
            return self.localisation_params + count_params(self.make_classifier(width))


def _model_parts(
    kind: str,
    in_shape: Sequence[int],
    *,
    num_classes: int = 10,
    transform: str | None = None,
    pool_after_transformer: bool = False,
    cnn_padding: str | None = None,
    localisation_hidden: Sequence[int] = (32, 32, 32),
    localisation_channels: Sequence[int] = (20, 20),
    localisation_fc: Sequence[int] = (20,),
    localisation_downsample: int = 2,
) -> _Parts:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; known: {', '.join(MODEL_KINDS)}")
    spatial = kind.startswith("st_")
    if spatial and not transform:
        raise ValueError(f"model {kind} needs a transformer (affine, projective or tps)")
    if not spatial and transform:
        raise ValueError(f"model {kind} has no spatial transformer; use transformer=none, not {transform!r}")
    in_shape = tuple(int(s) for s in in_shape)
    pool = 2 if (spatial and pool_after_transformer) else 1
    classifier_shape = (in_shape[0], in_shape[1] // pool, in_shape[2] // pool)
    base = kind.removeprefix("st_")
    if base == "cnn" and cnn_padding is None:
        cnn_padding = "valid" if min(classifier_shape[1:]) >= 28 else "same"

    transformer = None
    if spatial:
        family = get_transform(transform)
        if base == "fcn":
            loc = mlp_localisation(in_shape, family.identity(), hidden=localisation_hidden)
        else:
            loc = cnn_localisation(
                in_shape,
                family.identity(),
                channels=localisation_channels,
                fc=localisation_fc,
                downsample=localisation_downsample,
            )
        transformer = SpatialTransformer(loc, family)

    def make_classifier(width: int) -> nn.Module:
        if base == "fcn":
            return FCN(classifier_shape, (width, width), num_classes)
        return CNN(classifier_shape, (width, width), num_classes, padding=cnn_padding)

    return _Parts(base, transformer, pool, make_classifier)


def build_mnist_model(
    kind: str, in_shape: Sequence[int], *, param_budget: int = 400_000, **options
) -> tuple[TransformedClassifier, ModelInfo]:
    """Build one Table 1 model with its classifier widths solved to meet ``param_budget``.

    ``kind`` is ``fcn``, ``cnn``, ``st_fcn`` or ``st_cnn``; ``options``: ``num_classes`` (10),
    ``transform`` (the family, ``affine``, ``projective`` or ``tps``, for the ST models; ``None`` for the plain
    ones), ``pool_after_transformer``, ``cnn_padding`` (defaults to ``valid`` unless the classifier input is
    too small for it) and the localisation nets' sizes. The two hidden layers share one width.
    """
    parts = _model_parts(kind, in_shape, **options)
    width = solve_width(parts.param_count, param_budget)
    model = TransformedClassifier(parts.make_classifier(width), parts.transformer, parts.pool)
    low, high = PAPER_WIDTH_RANGE[parts.base]
    info = ModelInfo(
        kind=kind,
        transform=options.get("transform") if parts.transformer is not None else None,
        widths=(width, width),
        param_count=count_params(model),
        param_budget=param_budget,
        localisation_params=parts.localisation_params,
        in_paper_width_range=low <= width <= high,
    )
    return model, info


def width_range_params(kind: str, in_shape: Sequence[int], **options) -> tuple[int, int]:
    """The parameter counts of model ``kind`` (``build_mnist_model``'s arguments) at both ends of the paper's
    width range (FCN 128-256 units, CNN 32-64 filters), its localisation net included."""
    parts = _model_parts(kind, in_shape, **options)
    low, high = PAPER_WIDTH_RANGE[parts.base]
    return parts.param_count(low), parts.param_count(high)


@dataclass(frozen=True)
class RangeBudget:
    """A parameter budget chosen so that the most models of one data set have widths in the paper's ranges."""

    params: int
    in_range: tuple[str, ...]  # "fcn", "st_cnn-tps", ...: the models whose widths fall in the ranges
    out_of_range: tuple[str, ...]  # the models no single budget could fit together with the others


def width_range_budget(
    image_size: int,
    pool_after_transformer: bool,
    transforms: Sequence[str] = ("affine", "projective", "tps"),
    **options,
) -> RangeBudget:
    """The budget of the spec's second reading of "the same number of parameters": every model of a data
    set gets one budget, chosen so that as many models as possible have widths inside the paper's ranges
    (FCN 128-256 units, CNN 32-64 filters); of those budgets, the largest (the nearest to the 400k reading).

    Each model fits its range for budgets in ``[count at the low end, count at the high end]``; the answer
    is the right end of an interval where the most of these overlap. The models left outside are named.
    """
    intervals: dict[str, tuple[int, int]] = {}
    for kind in MODEL_KINDS:
        for transform in transforms if kind.startswith("st_") else (None,):
            name = kind if transform is None else f"{kind}-{transform}"
            intervals[name] = width_range_params(
                kind,
                (1, image_size, image_size),
                transform=transform,
                pool_after_transformer=pool_after_transformer,
                **options,
            )

    def fitting(budget: int) -> tuple[str, ...]:
        return tuple(n for n, (lo, hi) in intervals.items() if lo <= budget <= hi)

    # The number of overlapping intervals is largest at some interval's right end; take the largest such end.
    best = max((hi for _, hi in intervals.values()), key=lambda b: (len(fitting(b)), b))
    inside = fitting(best)
    return RangeBudget(best, inside, tuple(n for n in intervals if n not in inside))


def solve_width(param_count: Callable[[int], int], budget: int, low: int = 1, high: int = 4096) -> int:
    """The width whose parameter count is closest to ``budget`` (counts increase with width)."""
    if param_count(low) > budget:
        raise ValueError(
            f"even width {low} needs {param_count(low):,} parameters, over the budget of {budget:,}; "
            "raise model.param_budget"
        )
    while low < high:  # smallest width with count >= budget
        mid = (low + high) // 2
        if param_count(mid) < budget:
            low = mid + 1
        else:
            high = mid
    below = max(low - 1, 1)
    return min((below, low), key=lambda w: abs(param_count(w) - budget))


def parameter_table(
    image_sizes: dict[str, int], transforms: Sequence[str] = ("affine", "projective", "tps"), **options
) -> list[dict]:
    """Parameter counts of every Table 1 model for each data set (``{"r": 28, ...}``)."""
    rows = []
    for data, size in image_sizes.items():
        pool = data in ("rts", "tc")
        for kind in MODEL_KINDS:
            for transform in transforms if kind.startswith("st_") else (None,):
                _, info = build_mnist_model(
                    kind, (1, size, size), transform=transform, pool_after_transformer=pool, **options
                )
                rows.append({"data": data, **info.__dict__})
    return rows


def transformed_batch(model: TransformedClassifier, images: Tensor) -> tuple[Tensor, Tensor] | None:
    """The transformer's output and parameters for ``images`` (for pictures), or ``None`` without one."""
    if model.transformer is None:
        return None
    with torch.no_grad():
        out = model.transformer(images)
    return out, model.transformer.last_params
