"""The SVHN multi-digit models of Sect. 4.2 / Appendix A.5: the CNN, ST-CNN Single and ST-CNN Multi.

**Convention** (every model here):

- Input: float images in [0, 1], ``[B, C, H, W]`` with ``(C, H, W)`` the ``in_shape`` the model was built
  for: ``(3, 54, 54)`` for the 64 px set with random 54 px crops, ``(3, 128, 128)`` for the 128 px set; any
  size of at least 9 px works (see :func:`check_in_shape`).
- Output: logits ``[B, num_positions, num_classes]``, five positions of 11 classes by default (digits 0-9
  and "no digit"), one independent softmax head per position (train with
  ``stn_repro.training.objectives.SequenceClassification``).
- The images are centred by subtracting :data:`INPUT_CENTRE` (0.5) *after* the input transformer, so the
  sampler's zero padding is black, an image value, not a mid-grey that the localisation net could learn to
  zoom out into (spec Sect. 1, pitfall). The first localisation net reads the centred image.
- Transformer coordinates are those of :mod:`stn_repro.transformers`: normalised (x, y), backward warping
  (output -> input), ``align_corners=False``; affine params ``(a11, a12, b1, a21, a22, b2)``.

The baseline CNN (appendix, after Goodfellow et al. 2013) is, with ``conv[N, w, s, p]`` = N filters w x w,
stride s, padding p::

    conv[48,5,1,2]-max[2]-conv[64,5,1,2]-conv[128,5,1,2]-max[2]-conv[160,5,1,2]-conv[192,5,1,2]-max[2]-
    conv[192,5,1,2]-conv[192,5,1,2]-max[2]-conv[192,5,1,2]-fc[3072]-fc[3072]-fc[3072]

ReLU after every layer, then five 11-way linear heads. Every conv keeps the map size (5x5, padding 2); the
2x2 stride-2 max-pools use ``ceil_mode=True``: an odd map (27 px after the first pool of a 54 px input)
keeps its last row and column in a half-empty window instead of losing them, so no input pixel is dropped
(54 -> 27 -> 14 -> 7 -> 4: 4 x 4 x 192 = 3072 features into the first fc; 128 px gives 8 x 8 x 192).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stn_repro.models.mnist import count_params
from stn_repro.transformers import (
    Affine,
    SpatialTransformer,
    cnn_localisation,
    mlp_localisation,
    sample,
)

SVHN_MODEL_KINDS = ("cnn", "st_cnn_single", "st_cnn_multi")
CONV_CHANNELS = (48, 64, 128, 160, 192, 192, 192, 192)
POOL_AFTER = (True, False, True, False, True, False, True, False)  # max[2] after conv 1, 3, 5 and 7
CONV_KERNEL, CONV_PADDING = 5, 2
FC_UNITS = 3072
# The paper counts 11 hidden layers: the 8 convs and 3 fully connected layers (spec Sect. 5).
DEFAULT_FC_LAYERS = 3
LOCALISATION_UNITS = 32  # every conv and fc width of the SVHN localisation nets
MULTI_TRANSFORMER_STAGES = (0, 1, 2, 3)  # ST-CNN Multi: a transformer before each of the first four convs
INPUT_CENTRE = 0.5
"""Subtracted from the [0, 1] images after the input transformer: a constant, not data statistics, so a
model does not depend on the set it was built for (SVHN's channel means are about 0.45)."""


def scaled_width(units: int, width: float) -> int:
    """``units`` scaled by the ``width`` multiplier, rounded to the nearest integer, at least 1."""
    return max(1, round(units * width))


def check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` as ints; a ``ValueError`` unless every max-pool of the CNN reads at least 2 x 2.

    With ``ceil_mode`` pools any size survives, but below 9 px the last pool would read a single pixel and
    pool nothing: 9 -> 5 -> 3 -> 2 -> 1 is the smallest stack that pools four times.
    """
    try:
        channels, height, width = (int(s) for s in in_shape)
    except (TypeError, ValueError):
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}") from None
    if channels < 1:
        raise ValueError(f"in_shape needs at least one channel, got {in_shape!r}")
    sizes = _stage_input_sizes(height, width)
    for index, ((h, w), pool) in enumerate(zip(sizes, POOL_AFTER, strict=False)):
        if min(h, w) < (2 if pool else 1):
            raise ValueError(
                f"a {height}x{width} input is too small for the SVHN CNN: conv {index + 1} reads a {h}x{w} map "
                "and its 2x2 max-pool needs at least 2x2; the smallest input is 9x9"
            )
    return channels, height, width


def _stage_input_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """``(H, W)`` read by each conv layer, then the final map; convs keep the size, ceil-mode pools halve it."""
    sizes = [(height, width)]
    for pool in POOL_AFTER:
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)) if pool else (h, w))
    return sizes


class PositionHeads(nn.Linear):
    """``num_positions`` independent ``num_classes``-way linear heads, stored as one ``nn.Linear``.

    Row block ``i`` of the weight is head ``i``: no weight is shared, so this is exactly five separate
    layers (same parameters, same default initialisation, which depends on the fan-in only), in one matrix
    product. Returns ``[B, num_positions, num_classes]``.
    """

    def __init__(self, in_features: int, num_positions: int, num_classes: int):
        super().__init__(in_features, num_positions * num_classes)
        self.num_positions, self.num_classes = num_positions, num_classes

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).view(-1, self.num_positions, self.num_classes)


class MultiDigitCNN(nn.Module):
    """The baseline CNN of Table 2: eight 5x5 convs, four 2x2 max-pools, ``fc_layers`` fc layers, five heads.

    **Convention**: see the module docstring (input in [0, 1], centred inside; logits ``[B, P, K]``).

    - ``fc_layers`` (default 3): the paper says 11 hidden layers, which is 8 convs + 3 fc; transcriptions
      of the appendix list two or three ``fc[3072]`` (spec Sect. 5), so it is an argument.
    - ``dropout`` (p, default 0.5) on the output of every hidden layer except the first conv (appendix),
      i.e. on the input of conv 3-8, of every fc layer and of the heads: element-wise ``nn.Dropout``. Each
      sits at the start of the stage that reads it (``stages[k]`` = [dropout] conv [max-pool] ReLU), so a
      transformer inserted before stage ``k`` reads and warps the map *before* dropout: the localisation
      nets see no dropout noise. A p of 0 keeps the layers (no-ops), so the state dict is the same.
    - ``width`` multiplies every conv and fc width (rounded, at least 1): the paper's layout, shrunk for CPU
      runs. The heads keep ``num_positions * num_classes`` outputs.
    - Max-pools precede their ReLU (the same values and gradients, a ReLU commutes with a max, on a quarter
      of the elements; see :mod:`stn_repro.models.mnist`); ``ceil_mode=True`` keeps odd maps' last row and
      column.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 54, 54),
        *,
        width: float = 1.0,
        fc_layers: int = DEFAULT_FC_LAYERS,
        dropout: float = 0.5,
        num_positions: int = 5,
        num_classes: int = 11,
    ):
        super().__init__()
        in_shape = check_in_shape(in_shape)
        _check_options(width, fc_layers, dropout, num_positions, num_classes)
        self.in_shape = in_shape
        self.conv_channels = tuple(scaled_width(c, width) for c in CONV_CHANNELS)
        self.fc_units = scaled_width(FC_UNITS, width)
        self.stage_input_sizes = _stage_input_sizes(*in_shape[1:])
        stages = []
        in_channels = in_shape[0]
        for index, (out_channels, pool) in enumerate(zip(self.conv_channels, POOL_AFTER, strict=True)):
            layers: list[nn.Module] = [nn.Dropout(dropout)] if index >= 2 else []
            layers.append(nn.Conv2d(in_channels, out_channels, CONV_KERNEL, padding=CONV_PADDING))
            if pool:
                # Out of place after the pool: in place on a pooled output makes vmap (stacked seeds) copy it.
                layers += [nn.MaxPool2d(2, ceil_mode=True), nn.ReLU()]
            else:
                layers.append(nn.ReLU(inplace=True))
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        final_h, final_w = self.stage_input_sizes[-1]
        features = in_channels * final_h * final_w
        fully_connected: list[nn.Module] = [nn.Flatten()]
        for _ in range(fc_layers):
            fully_connected += [
                nn.Dropout(dropout),
                nn.Linear(features, self.fc_units),
                nn.ReLU(inplace=True),
            ]
            features = self.fc_units
        fully_connected.append(nn.Dropout(dropout))
        self.fully_connected = nn.Sequential(*fully_connected)
        self.heads = PositionHeads(features, num_positions, num_classes)
        self.reset_hidden_layers()

    def reset_hidden_layers(self) -> None:
        """He initialisation (normal, fan-in, ReLU gain) of every conv and fc layer before a ReLU; zero biases.

        [choice] The paper does not give its initialisation. PyTorch's default (uniform, variance
        1/(3 fan-in)) scales the signal by about 1/sqrt(6) per ReLU layer: after 11 hidden layers the logits
        barely depend on the image. Measured on the synthetic stand-in (quarter width, no dropout, batch 32):
        with the default the loss sat at the label prior (7.4-7.6) for 1,900 iterations; with He it fell to
        6.2 in 600. The heads keep PyTorch's default (no ReLU after them).
        """
        for module in (*self.stages.modules(), *self.fully_connected.modules()):
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images, self.in_shape)
        x = images - INPUT_CENTRE
        for stage in self.stages:
            x = stage(x)
        return self.classify(x)

    def classify(self, features: Tensor) -> Tensor:
        """Fully connected layers and heads on the last conv stage's output."""
        return self.heads(self.fully_connected(features))


class TransformedMultiDigitCNN(nn.Module):
    """A :class:`MultiDigitCNN` with affine spatial transformers inserted before some of its conv stages.

    **Convention**: see the module docstring. ``transformers[i]`` sits before conv stage
    ``transformer_stages[i]`` (0 = on the input image) and warps the map that stage reads; its
    localisation net reads the same map (the centred image for stage 0). ST-CNN Single is one transformer
    at stage 0, ST-CNN Multi one at each of stages 0-3.

    The max-pools between transformers change the frame slightly where a map has an odd size:
    ``frame_maps[i]`` is the affine map (params ``[6]``) from the frame of the map transformer ``i + 1``
    reads to the frame of transformer ``i``'s output. A ceil-mode 2x2 stride-2 pool of an even ``n`` px map
    spans exactly the same [-1, 1] (``align_corners=False``); of an odd ``n`` its last window hangs one
    pixel past the edge, so the pooled frame spans [-1, 1 + 2/n] of the unpooled one (27 -> 14 for a 54 px
    input, between transformers 3 and 4; a 128 px input has only even maps). :func:`composed_affine`
    includes them.
    """

    def __init__(
        self,
        cnn: MultiDigitCNN,
        transformers: Sequence[SpatialTransformer],
        transformer_stages: Sequence[int],
        in_shape: Sequence[int],
    ):
        super().__init__()
        stages = tuple(int(s) for s in transformer_stages)
        if len(stages) != len(transformers) or not transformers:
            raise ValueError(
                f"need one stage per transformer, got {len(transformers)} transformers, stages {stages}"
            )
        if list(stages) != sorted(set(stages)) or not 0 <= stages[0] <= stages[-1] < len(cnn.stages):
            raise ValueError(
                f"transformer stages must increase within 0..{len(cnn.stages) - 1}, got {stages}"
            )
        self.cnn = cnn
        self.transformers = nn.ModuleList(transformers)
        self.transformer_stages = stages
        self.in_shape = check_in_shape(in_shape)
        self._transformer_at = {stage: i for i, stage in enumerate(stages)}
        self.frame_maps = tuple(
            _pool_frame_map(cnn.stage_input_sizes, POOL_AFTER, start, stop)
            for start, stop in itertools.pairwise(stages)
        )

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images, self.in_shape)
        x = images
        for index, stage in enumerate(self.cnn.stages):
            slot = self._transformer_at.get(index)
            if index == 0:
                if slot is not None:
                    x = self.transformers[slot](x, localisation_input=x - INPUT_CENTRE)
                x = x - INPUT_CENTRE  # after the sampler: its zero padding stays black
            elif slot is not None:
                x = self.transformers[slot](x)
            x = stage(x)
        return self.cnn.classify(x)


def _pool_frame_map(
    sizes: Sequence[tuple[int, int]], pool_after: Sequence[bool], start: int, stop: int
) -> tuple[float, ...]:
    """Affine params mapping the frame of the map read by stage ``stop`` to that read by stage ``start``.

    One ceil-mode pool of ``n`` px gives ``m = ceil(n / 2)`` px whose window ``j`` covers input pixels
    ``[2j, 2j + 2)``: pooled ``x_p`` is input ``x = (2m / n) x_p + (2m / n - 1)``, per axis.
    """
    scale, shift = [1.0, 1.0], [0.0, 0.0]  # (x, y): frame of `stop` -> frame of `start`, built outside in
    for index in range(start, stop):
        if not pool_after[index]:
            continue
        h, w = sizes[index]
        for axis, n in enumerate((w, h)):
            pool_scale = 2 * math.ceil(n / 2) / n
            # outer (scale, shift) o pool (pool_scale, pool_scale - 1)
            shift[axis] += scale[axis] * (pool_scale - 1.0)
            scale[axis] *= pool_scale
    return (scale[0], 0.0, shift[0], 0.0, scale[1], shift[1])


@dataclass(frozen=True)
class SvhnModelInfo:
    """What was built: recorded beside every SVHN result."""

    kind: str
    width: float
    fc_layers: int
    param_count: int
    localisation_params: int
    in_shape: tuple[int, int, int]
    conv_channels: tuple[int, ...]
    fc_units: int
    localisation_units: int
    dropout: float


def build_svhn_model(
    kind: str,
    in_shape: Sequence[int] = (3, 54, 54),
    *,
    width: float = 1.0,
    fc_layers: int = DEFAULT_FC_LAYERS,
    dropout: float = 0.5,
    num_positions: int = 5,
    num_classes: int = 11,
    transformer_output_size: int | Sequence[int] | None = None,
) -> tuple[MultiDigitCNN | TransformedMultiDigitCNN, SvhnModelInfo]:
    """Build one Table 2 model: ``cnn``, ``st_cnn_single`` or ``st_cnn_multi`` (see :data:`SVHN_MODEL_KINDS`).

    - ``cnn``: :class:`MultiDigitCNN`.
    - ``st_cnn_single``: one affine transformer on the image, localisation net
      ``conv[32,5,1,2]-max[2]-conv[32,5,1,2]-fc[32]-fc[32]``-regression (ReLU, 2x2 floor pool), then the CNN.
      Its output is ``transformer_output_size`` (an int or ``(H, W)``; default: the input's size) and the CNN
      is built for that size.
    - ``st_cnn_multi``: an affine transformer before each of the first four convs, on the map that conv
      reads, each with localisation net ``fc[32]-fc[32]``-regression reading that map; outputs keep the
      map's size.

    ``width`` scales the localisation nets' 32 units too, so a narrow model is the paper's layout shrunk
    uniformly. Every regression layer starts at the identity (zero weights, identity bias), so at
    initialisation an ST model computes what its CNN computes (up to the sampler's float rounding).
    """
    if kind not in SVHN_MODEL_KINDS:
        raise ValueError(f"unknown SVHN model {kind!r}; known: {', '.join(SVHN_MODEL_KINDS)}")
    in_shape = check_in_shape(in_shape)
    if transformer_output_size is not None and kind != "st_cnn_single":
        raise ValueError(
            f"transformer_output_size applies to st_cnn_single only (got {kind}): the CNN has no transformer "
            "and ST-CNN Multi's transformers keep the size of the maps they sit between"
        )
    cnn_options = {
        "width": width,
        "fc_layers": fc_layers,
        "dropout": dropout,
        "num_positions": num_positions,
        "num_classes": num_classes,
    }
    loc_units = scaled_width(LOCALISATION_UNITS, width)
    model: MultiDigitCNN | TransformedMultiDigitCNN
    if kind == "cnn":
        model = cnn = MultiDigitCNN(in_shape, **cnn_options)
    elif kind == "st_cnn_single":
        if transformer_output_size is None:
            out_size = in_shape[1:]
        elif isinstance(transformer_output_size, int):
            out_size = (transformer_output_size, transformer_output_size)
        else:
            out_size = tuple(int(s) for s in transformer_output_size)
        cnn = MultiDigitCNN((in_shape[0], *out_size), **cnn_options)
        family = Affine()
        localisation = cnn_localisation(
            in_shape,
            family.identity(),
            channels=(loc_units, loc_units),
            kernel_size=5,
            padding=2,
            pool_after=(True, False),
            fc=(loc_units, loc_units),
            downsample=1,
        )
        transformer = SpatialTransformer(localisation, family, out_size)
        model = TransformedMultiDigitCNN(cnn, [transformer], (0,), in_shape)
    else:
        cnn = MultiDigitCNN(in_shape, **cnn_options)
        transformers = []
        for stage in MULTI_TRANSFORMER_STAGES:
            channels = in_shape[0] if stage == 0 else cnn.conv_channels[stage - 1]
            map_shape = (channels, *cnn.stage_input_sizes[stage])
            family = Affine()
            localisation = mlp_localisation(map_shape, family.identity(), hidden=(loc_units, loc_units))
            transformers.append(SpatialTransformer(localisation, family))
        model = TransformedMultiDigitCNN(cnn, transformers, MULTI_TRANSFORMER_STAGES, in_shape)
    loc_params = (
        sum(count_params(t.localisation) for t in model.transformers)
        if isinstance(model, TransformedMultiDigitCNN)
        else 0
    )
    info = SvhnModelInfo(
        kind=kind,
        width=float(width),
        fc_layers=int(fc_layers),
        param_count=count_params(model),
        localisation_params=loc_params,
        in_shape=in_shape,
        conv_channels=cnn.conv_channels,
        fc_units=cnn.fc_units,
        localisation_units=loc_units if kind != "cnn" else 0,
        dropout=float(dropout),
    )
    return model, info


def compose_affines(*params: Tensor) -> Tensor:
    """One affine map equal to applying ``params[-1]`` first, then ..., then ``params[0]`` (outermost first).

    **Convention**: each ``[B, 6]`` (or ``[6]``, shared by the batch) in the layout of
    :class:`~stn_repro.transformers.Affine`; with backward warps listed from the image inwards, the result
    maps the innermost output frame to the image. Computed in float64; returns ``[B, 6]`` in the dtype of
    ``params[0]``.
    """
    if not params:
        raise ValueError("compose_affines needs at least one affine map")
    dtype = params[0].dtype
    composed = None
    for p in params:
        p = p.reshape(-1, 6).to(torch.float64)
        bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=p.device).expand(p.shape[0], 1, 3)
        matrix = torch.cat([p.view(-1, 2, 3), bottom], dim=1)
        composed = matrix if composed is None else composed @ matrix
    return composed[:, :2, :].reshape(-1, 6).to(dtype)


def affine_chain(model: TransformedMultiDigitCNN) -> list[Tensor]:
    """The maps of the last forward pass from the last transformer's output out to the image, outermost first.

    ``[T_1, F_1, T_2, F_2, ..., T_n]``: ``T_i`` is transformer ``i``'s ``last_params`` ``[B, 6]``, ``F_i``
    the pool frame map between transformers ``i`` and ``i + 1`` (``model.frame_maps[i]``, expanded to
    ``[B, 6]``). Raises ``ValueError`` for a model without transformers or before any forward pass.
    """
    if not isinstance(model, TransformedMultiDigitCNN):
        raise ValueError(f"{type(model).__name__} has no spatial transformers to compose")
    chain: list[Tensor] = []
    for i, transformer in enumerate(model.transformers):
        params = transformer.last_params
        if params is None:
            raise ValueError("run a forward pass first: the transformers have no last_params yet")
        if i > 0:
            frame = torch.tensor(model.frame_maps[i - 1], dtype=params.dtype, device=params.device)
            chain.append(frame.expand(params.shape[0], -1))
        chain.append(params)
    return chain


def composed_affine(model: TransformedMultiDigitCNN) -> Tensor:
    """The model's transformers of the last forward pass as one affine map, ``[B, 6]``.

    **Convention**: maps the last transformer's output frame to the input image (normalised (x, y),
    ``align_corners=False``, backward warping), through every transformer in order and the pool frame maps
    between them (see :class:`TransformedMultiDigitCNN`). One transformer (ST-CNN Single): its own params.
    """
    return compose_affines(*affine_chain(model))


@torch.no_grad()
def transformer_outputs(model: TransformedMultiDigitCNN, images: Tensor) -> tuple[Tensor, Tensor]:
    """What the model's transformers look at, for pictures: ``(outputs [B, C, H', W'], params [B, 6])``.

    Runs ``images`` through the model in eval mode (restoring its mode after), composes its transformers
    (:func:`composed_affine`) and samples the images with that map: for ST-CNN Single that is exactly its
    transformer's output; for ST-CNN Multi, the image region the four transformers together pass on, drawn
    at the first transformer's output size. Draw the paper's Table 2 (right) picture with
    ``stn_repro.viz.transformation_figure(images, outputs, params, Affine())``.
    """
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
    params = composed_affine(model)
    first = model.transformers[0]
    size = first.output_size or tuple(images.shape[-2:])
    grid = first.family.grid(params, size)
    outputs = sample(
        images,
        grid,
        mode=first.mode,
        padding_mode=first.padding_mode,
        fill=first.fill,
        align_corners=first.family.align_corners,
    )
    return outputs, params


def _check_options(
    width: float, fc_layers: int, dropout: float, num_positions: int, num_classes: int
) -> None:
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if int(fc_layers) != fc_layers or fc_layers < 0:
        raise ValueError(f"fc_layers must be a non-negative integer, got {fc_layers!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if num_positions < 1 or num_classes < 2:
        raise ValueError(
            f"need at least one position and two classes, got num_positions={num_positions}, "
            f"num_classes={num_classes}"
        )


def _check_images(images: Tensor, in_shape: tuple[int, int, int]) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != in_shape:
        raise ValueError(
            f"this model was built for images [B, {', '.join(map(str, in_shape))}], got {tuple(images.shape)}; "
            "build it with in_shape set to the images' (C, H, W)"
        )
