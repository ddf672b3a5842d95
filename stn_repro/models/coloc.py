"""Co-localisation (Appendix A.2) models: the attention transformer, the frozen CNN embedding e(), and the
geometry of the metric (the transformer's sampling window as a pixel box, IoU).

**Convention**: images ``[B, 1, 84, 84]`` float in [0, 1]; boxes ``[B, 4]`` float ``(x0, y0, x1, y1)`` in
continuous pixel coordinates with the image spanning ``[0, S]`` (pixel ``i`` covers ``[i, i + 1]``), the
convention of :mod:`stn_repro.data.distortions` and of ``align_corners=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stn_repro.models.mnist import CNN
from stn_repro.transformers import ALIGN_CORNERS, RegressionHead, SpatialTransformer, get_transform

COLOC_IMAGE_SIZE = 84
COLOC_OUTPUT_SIZE = 28  # the transformer's output: what e() reads, an MNIST-sized digit
# How e(x) is scaled: "none" (the activations as they are), "unit" (e(x) / |e(x)|), "per_layer" (each of the
# three parts scaled to length 1/sqrt(3), so |e(x)| = 1 and the three layers weigh the same), "logits" (the
# classification layer alone, as it is: hidden layer 1 has ~900x its values and dominates the other scalings).
EMBEDDING_NORMS = ("none", "unit", "per_layer", "logits")


def colocalisation_localisation(
    initial: Tensor,
    image_size: int = COLOC_IMAGE_SIZE,
    channels: int = 8,
    kernel_size: int = 9,
    stride: int = 4,
    fc: Sequence[int] = (8, 8),
) -> nn.Sequential:
    """The paper's localisation net: conv 8 filters 9x9 stride 4 -> 2x2 max-pool stride 2 -> fc 8 -> fc 8 ->
    fc 3 regression (ReLU after the conv and each hidden fc). The regression layer starts with zero weights
    and ``initial`` as its bias (spec Sect. 1), so every image starts at the same window ``initial``."""
    layers: list[nn.Module] = [
        nn.Conv2d(1, channels, kernel_size, stride=stride),
        nn.MaxPool2d(2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
    ]
    conv_side = (image_size - kernel_size) // stride + 1
    width = channels * (conv_side // 2) ** 2
    if conv_side // 2 < 1:
        raise ValueError(f"a {image_size}px image is too small for this localisation net")
    for units in fc:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=True)]
        width = units
    layers.append(RegressionHead(width, initial))
    return nn.Sequential(*layers)


class BoundedAttention(nn.Module):
    """Raw regression outputs ``(a, b, c)`` -> attention parameters ``(s, tx, ty)`` kept in bounds.

    ``s = low + (high - low) * sigmoid(a)`` (``low == high``: a fixed scale; ``a`` is then unused), and with
    ``inside`` the window stays inside the image: ``(tx, ty) = (1 - s) * tanh(b, c)``; without it
    ``(tx, ty) = (b, c)``. :meth:`raw` inverts the map, so a regression layer whose bias is ``raw(p)``
    (and weights zero) starts every image at the parameters ``p``.
    """

    def __init__(self, scale_range: Sequence[float], inside: bool = True):
        super().__init__()
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be 0 < low <= high, got {list(scale_range)}")
        if inside and high > 1:
            raise ValueError(f"a window inside the image needs a scale of at most 1, got {list(scale_range)}")
        self.low, self.high, self.inside = low, high, bool(inside)

    def forward(self, raw: Tensor) -> Tensor:
        scale = self.low + (self.high - self.low) * torch.sigmoid(raw[:, :1])
        shift = (1 - scale) * torch.tanh(raw[:, 1:3]) if self.inside else raw[:, 1:3]
        return torch.cat([scale, shift], dim=1)

    def raw(self, params: Tensor) -> Tensor:
        scale, shift = float(params[0]), params[1:3].double()
        if self.low < self.high:
            if not self.low < scale < self.high:
                raise ValueError(
                    f"the initial scale {scale:g} must lie strictly inside ({self.low:g}, {self.high:g})"
                )
            a = torch.logit(torch.tensor((scale - self.low) / (self.high - self.low), dtype=torch.float64))
        else:
            if abs(scale - self.low) > 1e-6:
                raise ValueError(
                    f"with a fixed scale of {self.low:g} the initial scale must be it, got {scale:g}"
                )
            a = torch.tensor(0.0, dtype=torch.float64)
        if self.inside:
            limit = 1 - scale
            if not torch.all(shift.abs() < limit) and not (limit == 0 and torch.all(shift == 0)):
                raise ValueError(f"the initial window {params.tolist()} is not inside the image")
            b = torch.atanh(shift / limit) if limit > 0 else torch.zeros_like(shift)
        else:
            b = shift
        return torch.cat([a.reshape(1), b]).float()

    def extra_repr(self) -> str:
        return f"scale_range=({self.low:g}, {self.high:g}), inside={self.inside}"


def colocalisation_transformer(
    init_scale: float = 1.0,
    init_translation: Sequence[float] = (0.0, 0.0),
    image_size: int = COLOC_IMAGE_SIZE,
    output_size: int = COLOC_OUTPUT_SIZE,
    scale_range: Sequence[float] | None = None,
    inside: bool = False,
) -> SpatialTransformer:
    """The attention spatial transformer ``(s, tx, ty)``: 84x84 image in, 28x28 window out.

    It starts at ``s = init_scale``, ``(tx, ty) = init_translation``: ``init_scale=1`` is the family's
    identity (the whole image, shrunk to 28x28), ``1/3`` a 28x28 window at 1:1 scale. With ``scale_range``
    and/or ``inside`` the regression layer's outputs go through :class:`BoundedAttention` (the scale kept in
    ``scale_range``, the window inside the image); without them they are ``(s, tx, ty)`` themselves.
    """
    family = get_transform("attention")
    initial = torch.tensor([float(init_scale), *map(float, init_translation)])
    if initial.numel() != 3 or not torch.isfinite(initial).all() or not initial[0] > 0:
        raise ValueError(
            f"the initial attention must be a positive scale and two offsets, got {initial.tolist()}"
        )
    if scale_range is None and not inside:
        localisation = colocalisation_localisation(initial, image_size)
    else:
        bounds = BoundedAttention(scale_range if scale_range is not None else (1e-3, 1.0), inside)
        localisation = colocalisation_localisation(bounds.raw(initial), image_size)
        localisation.append(bounds)
    return SpatialTransformer(localisation, family, output_size=(output_size, output_size))


class CnnEmbedding(nn.Module):
    """e(x): the Sect. 2 CNN's two hidden layers' activations and its logits, flattened and concatenated.

    A hidden layer's activation is the map the next weight layer reads: conv -> 2x2 max-pool -> ReLU (the
    CNN pools before its ReLU, which gives the same values as pooling after it). For a 28x28 input and
    widths ``(w1, w2)`` that is ``w1 * 10 * 10 + w2 * 2 * 2 + 10`` values. The CNN is frozen here: no
    parameter requires grad and the module stays in eval mode, but gradients flow through it to its input.
    """

    def __init__(self, cnn: CNN, normalise: str = "none"):
        super().__init__()
        if normalise not in EMBEDDING_NORMS:
            raise ValueError(f"normalise={normalise!r}: use one of {', '.join(EMBEDDING_NORMS)}")
        self.normalise = normalise
        if not isinstance(cnn, CNN):
            raise TypeError(f"the embedding reads a stn_repro.models.mnist.CNN, got {type(cnn).__name__}")
        self.cnn = cnn
        relus = [i for i, layer in enumerate(cnn) if isinstance(layer, nn.ReLU)]
        if len(relus) != 2:
            raise ValueError(f"expected the CNN's two hidden layers, found {len(relus)} ReLUs")
        self.taps = set(relus)
        for parameter in self.cnn.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CnnEmbedding:
        return super().train(False)  # frozen: always in eval mode

    @property
    def input_side(self) -> int:
        """The side of the square images the CNN reads (its classification layer fixes it)."""
        return int(self.cnn.in_shape[-1])

    def layers(self, x: Tensor) -> list[Tensor]:
        """The three parts of e(x), unscaled: hidden layer 1, hidden layer 2, the logits, each ``[B, n_k]``."""
        parts = []
        for index, layer in enumerate(self.cnn):
            x = layer(x)
            if index in self.taps:
                parts.append(x.flatten(1))
        parts.append(x.flatten(1))  # the logits
        return parts

    def forward(self, x: Tensor) -> Tensor:
        return combine_layers(self.layers(x), self.normalise)


def combine_layers(parts: Sequence[Tensor], normalise: str) -> Tensor:
    """e(x) from its three unscaled parts (:meth:`CnnEmbedding.layers`) under one of :data:`EMBEDDING_NORMS`."""
    if normalise == "logits":
        return parts[-1]
    if normalise == "per_layer":
        parts = [F.normalize(part, dim=1) / len(parts) ** 0.5 for part in parts]
    elif normalise not in ("none", "unit"):
        raise ValueError(f"normalise={normalise!r}: use one of {', '.join(EMBEDDING_NORMS)}")
    e = torch.cat(list(parts), dim=1)
    return F.normalize(e, dim=1) if normalise == "unit" else e


def attention_boxes(
    params: Tensor,
    image_size: int = COLOC_IMAGE_SIZE,
    output_size: int = COLOC_OUTPUT_SIZE,
    align_corners: bool = ALIGN_CORNERS,
) -> Tensor:
    """The pixel box ``(x0, y0, x1, y1)`` an attention transformer ``(s, tx, ty)`` samples, ``[B, 4]``.

    The box is the image of the output frame's outer edges. With ``align_corners=False`` (the suite's) the
    output's edges are ``+-1``, mapped to ``t +- s`` in the input, and normalised ``u`` is pixel position
    ``(u + 1) * S / 2``: the box is ``((tx - s + 1) S / 2, ..., (tx + s + 1) S / 2)``, ``s * S`` px wide.
    With ``align_corners=True`` the output's corner-pixel *centres* sit at ``+-1``, so its edges are
    ``+-(1 + 1 / (n - 1))``, and normalised ``u`` is pixel position ``(u + 1) (S - 1) / 2 + 1/2``. A negative
    scale (a mirrored window) gives the same box. ``output_size`` matters only with ``align_corners=True``.
    """
    params = params.float()
    scale, centre = params[:, :1].abs(), params[:, 1:3]
    if align_corners:
        half = scale * (1.0 + 1.0 / (output_size - 1))
        lo, hi = (
            (centre - half + 1) * (image_size - 1) / 2 + 0.5,
            (centre + half + 1) * (image_size - 1) / 2 + 0.5,
        )
    else:
        lo, hi = (centre - scale + 1) * image_size / 2, (centre + scale + 1) * image_size / 2
    return torch.cat([lo, hi], dim=1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes ``a[i]`` and ``b[i]`` (``[B, 4]`` each, ``(x0, y0, x1, y1)``), ``[B]``.

    A box of zero area has IoU 0 with anything."""
    a, b = a.float(), b.float()
    width = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    height = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    intersection = width * height

    def area(box: Tensor) -> Tensor:
        return (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)

    union = area(a) + area(b) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def box_errors(found: Tensor, true: Tensor) -> dict[str, Tensor]:
    """How each found box (``[B, 4]``) misses its true box (``[B, 4]``), per box ``[B]``: ``iou``; ``size_ratio``,
    the found box's side over the true box's (the mean of width and height ratios); ``centre_offset_px``, the
    distance between the centres; and two what-ifs that separate size from place: ``iou_true_size`` (a box of
    the true size at the found centre) and ``iou_true_centre`` (a box of the found size at the true centre)."""
    found, true = found.float(), true.float()

    def centre(box: Tensor) -> Tensor:
        return (box[:, :2] + box[:, 2:]) / 2

    def size(box: Tensor) -> Tensor:
        return box[:, 2:] - box[:, :2]

    def box_at(middle: Tensor, sides: Tensor) -> Tensor:
        return torch.cat([middle - sides / 2, middle + sides / 2], dim=1)

    return {
        "iou": box_iou(found, true),
        "size_ratio": (size(found) / size(true).clamp(min=1e-12)).mean(dim=1),
        "centre_offset_px": (centre(found) - centre(true)).norm(dim=1),
        "iou_true_size": box_iou(box_at(centre(found), size(true)), true),
        "iou_true_centre": box_iou(box_at(centre(true), size(found)), true),
    }
