"""Spatial transformers: transform families, the sampler, localisation nets and the module.

See :mod:`stn_repro.transformers.grids` for the coordinate **Convention** that every function here shares.
"""

from .families import (
    FAMILIES,
    Affine,
    Attention,
    Projective,
    ThinPlateSpline,
    TransformFamily,
    affine_inverse,
    get_transform,
    projective_from_points,
    projective_inverse,
    similarity_to_affine,
    tps_control_points,
)
from .grids import ALIGN_CORNERS, base_grid, pixel_centres, pixels_to_normalised
from .localisation import RegressionHead, cnn_localisation, mlp_localisation
from .module import (
    COLLAPSED_SPREAD,
    ParallelTransformers,
    SpatialTransformer,
    localisation_spread,
    spread_collapsed,
)
from .sampler import MODES, PADDING_MODES, sample

__all__ = [
    "ALIGN_CORNERS",
    "COLLAPSED_SPREAD",
    "FAMILIES",
    "MODES",
    "PADDING_MODES",
    "Affine",
    "Attention",
    "ParallelTransformers",
    "Projective",
    "RegressionHead",
    "SpatialTransformer",
    "ThinPlateSpline",
    "TransformFamily",
    "affine_inverse",
    "base_grid",
    "cnn_localisation",
    "get_transform",
    "localisation_spread",
    "mlp_localisation",
    "pixel_centres",
    "pixels_to_normalised",
    "projective_from_points",
    "projective_inverse",
    "sample",
    "similarity_to_affine",
    "spread_collapsed",
    "tps_control_points",
]
