"""The MNIST addition classifiers (spec Sect. 3, Appendix A.1): FCN, CNN, ST-FCN and 2xST-FCN.

The input is two 42x42 channels, one RTS-distorted digit in each; the output the sum, 19 classes. Every model
has the same parameter budget as Table 1's (400k by default), the localisation nets included; the
classifier's width is solved to meet it, as :func:`~stn_repro.models.mnist.build_mnist_model` does.

- ``fcn``, ``cnn``, ``st_fcn`` are Table 1's models on a 2-channel input with 19 classes (built by
  :func:`~stn_repro.models.mnist.build_mnist_model`). The ST-FCN's one transformer has a localisation net
  (three 32-unit fc layers) that sees both channels, and its single warp is applied to both channels.
- ``2x_st_fcn``: two transformers in parallel (:class:`~stn_repro.transformers.ParallelTransformers`), each
  with its own localisation net seeing both channels and warping both; their outputs are concatenated into 4
  channels for the FCN.

Every transformer starts at the identity (zero regression weights, identity bias), so at initialisation each
sees the input unchanged. ``pool_after_transformer`` average-pools the transformer output by 2 before the
FCN, as Table 1 does for RTS (see ``configs/data/addition.yaml`` for why it is on by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor

from stn_repro.data.distortions import ADDITION_SIZE, NUM_ADDITION_CLASSES
from stn_repro.models.mnist import (
    FCN,
    PAPER_WIDTH_RANGE,
    ModelInfo,
    TransformedClassifier,
    build_mnist_model,
    count_params,
    solve_width,
)
from stn_repro.transformers import (
    ParallelTransformers,
    SpatialTransformer,
    get_transform,
    mlp_localisation,
)

ADDITION_MODEL_KINDS = ("fcn", "cnn", "st_fcn", "2x_st_fcn")
SPATIAL_KINDS = ("st_fcn", "2x_st_fcn")
ADDITION_INPUT_SHAPE = (2, ADDITION_SIZE, ADDITION_SIZE)
NUM_PARALLEL = 2  # the 2xST-FCN's transformers


def build_addition_model(
    kind: str,
    in_shape: Sequence[int] = ADDITION_INPUT_SHAPE,
    *,
    transform: str | None = None,
    num_classes: int = NUM_ADDITION_CLASSES,
    param_budget: int = 400_000,
    pool_after_transformer: bool = True,
    cnn_padding: str | None = None,
    localisation_hidden: Sequence[int] = (32, 32, 32),
) -> tuple[TransformedClassifier, ModelInfo]:
    """Build one Table 4 model with its classifier width solved to meet ``param_budget``.

    ``kind`` is one of :data:`ADDITION_MODEL_KINDS`; ``transform`` the family (``affine``, ``projective``,
    ``tps``) of the ST models, ``None`` for ``fcn`` and ``cnn``. Returns the model (a
    :class:`~stn_repro.models.mnist.TransformedClassifier`: ``.transformer`` is a
    :class:`~stn_repro.transformers.SpatialTransformer`, a ``ParallelTransformers`` of two, or ``None``)
    and its :class:`~stn_repro.models.mnist.ModelInfo`.
    """
    if kind not in ADDITION_MODEL_KINDS:
        raise ValueError(f"unknown addition model {kind!r}; known: {', '.join(ADDITION_MODEL_KINDS)}")
    in_shape = tuple(int(s) for s in in_shape)
    if kind != "2x_st_fcn":
        return build_mnist_model(
            kind,
            in_shape,
            num_classes=num_classes,
            transform=transform,
            param_budget=param_budget,
            pool_after_transformer=pool_after_transformer,
            cnn_padding=cnn_padding,
            localisation_hidden=localisation_hidden,
        )
    if not transform:
        raise ValueError(f"model {kind} needs a transformer (affine, projective or tps)")
    family = get_transform(transform)
    transformers = ParallelTransformers(
        SpatialTransformer(mlp_localisation(in_shape, family.identity(), hidden=localisation_hidden), family)
        for _ in range(NUM_PARALLEL)
    )
    pool = 2 if pool_after_transformer else 1
    classifier_shape = (NUM_PARALLEL * in_shape[0], in_shape[1] // pool, in_shape[2] // pool)

    def classifier_params(width: int) -> int:
        with torch.device("meta"):  # count without allocating
            return count_params(FCN(classifier_shape, (width, width), num_classes))

    loc_params = count_params(transformers)
    width = solve_width(lambda w: loc_params + classifier_params(w), param_budget)
    model = TransformedClassifier(FCN(classifier_shape, (width, width), num_classes), transformers, pool)
    low, high = PAPER_WIDTH_RANGE["fcn"]
    info = ModelInfo(
        kind=kind,
        transform=transform,
        widths=(width, width),
        param_count=count_params(model),
        param_budget=param_budget,
        localisation_params=loc_params,
        in_paper_width_range=low <= width <= high,
    )
    return model, info


def transformers_of(model: TransformedClassifier) -> list[SpatialTransformer]:
    """The model's spatial transformers in order (none for the FCN and CNN)."""
    if model.transformer is None:
        return []
    if isinstance(model.transformer, SpatialTransformer):
        return [model.transformer]
    return list(model.transformer)


def transformer_views(model: TransformedClassifier, images: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each transformer's output ``[N, 2, H, W]`` (before the pool) and parameters for ``images``."""
    views = []
    with torch.no_grad():
        for transformer in transformers_of(model):
            out = transformer(images)
            views.append((out, transformer.last_params))
    return views


def addition_parameter_table(
    transforms: Sequence[str] = ("affine", "projective", "tps"), **options
) -> list[dict]:
    """Parameter counts and widths of every Table 4 model (``options`` as :func:`build_addition_model`'s)."""
    rows = []
    for kind in ADDITION_MODEL_KINDS:
        for transform in transforms if kind in SPATIAL_KINDS else (None,):
            _, info = build_addition_model(kind, transform=transform, **options)
            rows.append(asdict(info))
    return rows
