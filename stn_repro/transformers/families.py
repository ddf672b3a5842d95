"""Transform families: parameters -> sampling grid, for models and data generators alike.

**Convention** (every family, every function here):

- Backward warping: a family maps each *target* (output) point to the *source* (input) point it samples,
  ``p_source = T_params(p_target)``, as in Sect. 3 of the paper.
- Points are normalised (x, y) pairs, [-1, 1] over each image, as described in :mod:`.grids`; the source
  and target frames may have different pixel sizes (a 42 px canvas sampling a 28 px digit).
- ``params`` has shape ``[B, num_params]``; ``grid(params, (H, W))`` returns ``[B, H, W, 2]`` for
  ``torch.nn.functional.grid_sample`` with the family's ``align_corners``.
- The identity parameters give the identity grid (:func:`.grids.base_grid`) *exactly*, bit for bit.
- Angles are in radians, positive = counter-clockwise as displayed (y points down).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from .grids import ALIGN_CORNERS, _check_size, base_grid, pixel_centres, shared_base_grid


class TransformFamily:
    """A parametric family of target -> source maps. Subclasses set ``name`` and ``num_params``."""

    name: ClassVar[str]
    num_params: int

    def __init__(self, align_corners: bool = ALIGN_CORNERS):
        self.align_corners = bool(align_corners)

    def identity(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The parameters of the identity map, shape ``[num_params]``, on the CPU."""
        raise NotImplementedError

    def transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        """Map target points ``[B, N, 2]`` (or ``[N, 2]``, shared by the batch) to source points ``[B, N, 2]``."""
        params = self.check_params(params)
        shared = points.dim() == 2
        if points.shape[-1] != 2 or not (
            shared or (points.dim() == 3 and points.shape[0] == params.shape[0])
        ):
            raise ValueError(
                f"{self.name}: points must be [N, 2] or [B, N, 2] with B={params.shape[0]}, "
                f"got {tuple(points.shape)}"
            )
        # Subclasses broadcast: shared [N, 2] points against [B, ...] params give [B, N, 2].
        return self._transform_points(params, points.to(params.dtype)).expand(params.shape[0], -1, -1)

    def grid(self, params: Tensor, size: tuple[int, int]) -> Tensor:
        """The sampling grid ``[B, H, W, 2]`` of an ``H x W`` output (see the module Convention)."""
        params = self.check_params(params)
        height, width = _check_size(size)
        points = shared_base_grid((height, width), self.align_corners, params.dtype, params.device)
        return self.transform_points(params, points.reshape(-1, 2)).reshape(-1, height, width, 2)

    def check_params(self, params: Tensor) -> Tensor:
        if not isinstance(params, Tensor):
            raise TypeError(f"{self.name}: params must be a torch.Tensor, got {type(params).__name__}")
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise ValueError(
                f"{self.name}: params must have shape [batch, {self.num_params}], got {tuple(params.shape)}"
            )
        if not params.is_floating_point():
            raise TypeError(f"{self.name}: params must be a floating-point tensor, got {params.dtype}")
        return params

    def _transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_params={self.num_params}, align_corners={self.align_corners})"


class Affine(TransformFamily):
    """``p_s = A p_t + b`` with params the 2x3 matrix ``[A | b]`` row-major: ``(a11, a12, b1, a21, a22, b2)``."""

    name = "affine"
    num_params = 6

    def identity(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype)

    def _transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        theta = params.view(-1, 2, 3)
        return points @ theta[:, :, :2].transpose(1, 2) + theta[:, :, 2].unsqueeze(1)


class Attention(TransformFamily):
    """Isotropic scale and translation: ``[[s, 0, tx], [0, s, ty]]``.

    Params ``(s, tx, ty)``; with ``scale`` fixed (CUB uses 0.5) only ``(tx, ty)``. A fixed scale other than 1
    has no identity map: ``identity()`` then returns the rest parameters ``(0, 0)``, a centred crop.
    """

    name = "attention"

    def __init__(self, scale: float | None = None, align_corners: bool = ALIGN_CORNERS):
        super().__init__(align_corners)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"attention: a fixed scale must be a positive number, got {scale!r}")
        self.scale = scale
        self.num_params = 3 if scale is None else 2

    def identity(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return (
            torch.tensor([1.0, 0.0, 0.0], dtype=dtype) if self.scale is None else torch.zeros(2, dtype=dtype)
        )

    def _transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        if self.scale is None:
            return points * params[:, None, :1] + params[:, None, 1:]
        return points * self.scale + params[:, None, :]

    def __repr__(self) -> str:
        return (
            f"Attention(scale={self.scale}, num_params={self.num_params}, align_corners={self.align_corners})"
        )


class Projective(TransformFamily):
    """Plane homography with ``h33 = 1``; params are ``(h11, h12, h13, h21, h22, h23, h31, h32)``.

    ``x_s = (h11 x + h12 y + h13) / (h31 x + h32 y + 1)``, likewise ``y_s`` with the second row.
    """

    name = "projective"
    num_params = 8

    def identity(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype)

    def _transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        h = torch.cat([params, torch.ones_like(params[:, :1])], dim=1).view(-1, 3, 3)
        mapped = points @ h[:, :, :2].transpose(1, 2) + h[:, :, 2].unsqueeze(1)
        return mapped[..., :2] / mapped[..., 2:]


class ThinPlateSpline(TransformFamily):
    """Thin plate spline through ``grid_size x grid_size`` control points (16 by default, as the paper).

    The control points sit on a regular grid over [-1, 1]^2 in the *target* frame, row-major (y outer,
    x inner). Params are their *source* positions, flattened ``[x1, y1, x2, y2, ...]``, so ``identity()``
    is the regular grid itself. The map is ``f(p) = a0 + a1 x + a2 y + sum_k w_k U(|p - c_k|)`` with
    ``U(r) = r^2 log r^2``, and passes exactly through the control points. The (K+3) x (K+3) TPS system is
    inverted once, in float64, at construction; for each output size the linear map from control-point
    offsets to the grid is cached, so a forward pass is one matrix product.
    """

    name = "tps"

    def __init__(self, grid_size: int = 4, align_corners: bool = ALIGN_CORNERS):
        super().__init__(align_corners)
        if int(grid_size) != grid_size or grid_size < 2:
            raise ValueError(f"tps: grid_size must be an integer >= 2, got {grid_size!r}")
        self.grid_size = int(grid_size)
        self.control_points = tps_control_points(self.grid_size, dtype=torch.float64)  # [K, 2]
        k = self.control_points.shape[0]
        self.num_params = 2 * k
        system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        system[:k, :k] = _tps_radial(self.control_points, self.control_points)
        system[:k, k] = 1.0
        system[:k, k + 1 :] = self.control_points
        system[k, :k] = 1.0
        system[k + 1 :, :k] = self.control_points.T
        # Only the columns acting on the control-point targets matter: the right-hand side is [Y; 0].
        self._solve = torch.linalg.inv(system)[:, :k]  # [K+3, K]
        self._grid_maps: dict[tuple, Tensor] = {}
        self._identities: dict[tuple, Tensor] = {}

    def identity(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.control_points.reshape(-1).to(dtype)

    def _interpolation_matrix(self, points: Tensor) -> Tensor:
        """``[N, K]`` float64 matrix mapping control-point values to the spline's values at ``points``."""
        points = points.to(torch.float64)
        basis = torch.cat(
            [
                _tps_radial(points, self.control_points.to(points.device)),
                torch.ones_like(points[:, :1]),
                points,
            ],
            dim=1,
        )
        return basis @ self._solve.to(points.device)

    def _offsets(self, params: Tensor) -> Tensor:
        # Work with offsets from the regular grid: identity params then give exactly zero displacement.
        # Cached per device: a host-to-GPU copy in every forward pass would make the host wait for the GPU.
        key = (params.device, params.dtype)
        if key not in self._identities:
            self._identities[key] = self.control_points.to(device=params.device, dtype=params.dtype).reshape(
                1, -1
            )
        return (params - self._identities[key]).view(params.shape[0], -1, 2)

    def _transform_points(self, params: Tensor, points: Tensor) -> Tensor:
        offsets = self._offsets(params)
        if points.dim() == 2:
            return points + self._interpolation_matrix(points).to(params.dtype) @ offsets
        matrices = torch.stack([self._interpolation_matrix(p) for p in points]).to(params.dtype)
        return points + matrices @ offsets

    def grid(self, params: Tensor, size: tuple[int, int]) -> Tensor:
        params = self.check_params(params)
        height, width = _check_size(size)
        key = (height, width, params.device, params.dtype)
        if key not in self._grid_maps:
            points = base_grid((height, width), self.align_corners, dtype=torch.float64, device=params.device)
            self._grid_maps[key] = self._interpolation_matrix(points.reshape(-1, 2)).to(params.dtype)
        points = shared_base_grid((height, width), self.align_corners, params.dtype, params.device)
        displacement = self._grid_maps[key] @ self._offsets(params)
        return points + displacement.view(-1, height, width, 2)

    def __repr__(self) -> str:
        return (
            f"ThinPlateSpline(grid_size={self.grid_size}, num_params={self.num_params}, "
            f"align_corners={self.align_corners})"
        )


def _tps_radial(points: Tensor, centres: Tensor) -> Tensor:
    """``U(r) = r^2 log r^2`` between ``points [N, 2]`` and ``centres [K, 2]``, with ``U(0) = 0``."""
    r2 = (points.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(-1)
    return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(torch.finfo(r2.dtype).tiny)), torch.zeros_like(r2))


FAMILIES: dict[str, type[TransformFamily]] = {
    "affine": Affine,
    "attention": Attention,
    "projective": Projective,
    "tps": ThinPlateSpline,
}


def get_transform(name: str, **options) -> TransformFamily:
    """Build a transform family by name: ``affine``, ``attention``, ``projective`` or ``tps``.

    Options go to the family (``align_corners`` for all; ``scale`` for attention; ``grid_size`` for tps).
    """
    try:
        cls = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown transform family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None
    try:
        return cls(**options)
    except TypeError as error:
        raise TypeError(f"{name}: bad options {options!r}: {error}") from None


# --- Constructors used by the data generators (and by users who want a known warp) ---------------------


def similarity_to_affine(
    angle: Tensor, scale: Tensor, translation: Tensor, *, scale_y: Tensor | None = None
) -> Tensor:
    """Affine params (target -> source) of the image transformation "scale, rotate, then translate".

    The content moves by ``q = S R(angle) p + t``: a source point ``p`` lands at target ``q``. ``angle`` in
    radians is counter-clockwise as displayed; ``scale`` (and optionally a different ``scale_y``) multiply
    normalised lengths *measured in the target frame*, so a 28 px digit drawn at its own size in a 42 px
    canvas has ``scale = 28 / 42``. Shapes: ``angle, scale [B]``, ``translation [B, 2]``; returns ``[B, 6]``.
    """
    scale_y = scale if scale_y is None else scale_y
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward rotation, counter-clockwise on screen with y down, is [[cos, sin], [-sin, cos]]; its inverse
    # is the transpose. Inverse of q = S R p + t is p = R^T S^-1 (q - t).
    inv = torch.stack(
        [torch.stack([cos / scale, -sin / scale_y], -1), torch.stack([sin / scale, cos / scale_y], -1)], -2
    )
    shift = -(inv @ translation.unsqueeze(-1)).squeeze(-1)
    return torch.cat([inv, shift.unsqueeze(-1)], dim=-1).reshape(-1, 6)


def affine_inverse(params: Tensor) -> Tensor:
    """Params of the inverse affine map, ``[B, 6] -> [B, 6]``."""
    theta = params.view(-1, 2, 3)
    inv = torch.linalg.inv(theta[:, :, :2])
    return torch.cat([inv, -(inv @ theta[:, :, 2:])], dim=-1).reshape(-1, 6)


def projective_from_points(target_points: Tensor, source_points: Tensor) -> Tensor:
    """Homography params (h33 = 1) mapping 4 target points onto 4 source points: ``[B, 4, 2] x2 -> [B, 8]``.

    Solves the 8x8 direct linear system in float64 for accuracy; returns the dtype of ``source_points``.
    """
    if target_points.shape[-2:] != (4, 2) or source_points.shape != target_points.shape:
        raise ValueError(
            f"projective_from_points needs [B, 4, 2] point sets, got {tuple(target_points.shape)} "
            f"and {tuple(source_points.shape)}"
        )
    t, s = target_points.to(torch.float64), source_points.to(torch.float64)
    x, y, u, v = t[..., 0], t[..., 1], s[..., 0], s[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    system = torch.cat([rows_u, rows_v], dim=-2)  # [B, 8, 8]
    rhs = torch.cat([u, v], dim=-1).unsqueeze(-1)
    return torch.linalg.solve(system, rhs).squeeze(-1).to(source_points.dtype)


def projective_inverse(params: Tensor) -> Tensor:
    """Params of the inverse homography (renormalised to h33 = 1), ``[B, 8] -> [B, 8]``."""
    h = torch.cat([params, torch.ones_like(params[:, :1])], dim=1).view(-1, 3, 3)
    inv = torch.linalg.inv(h.to(torch.float64))
    inv = inv / inv[:, 2:, 2:]
    return inv.reshape(-1, 9)[:, :8].to(params.dtype)


def tps_control_points(grid_size: int = 4, *, dtype=torch.float32) -> Tensor:
    """The regular target control grid of :class:`ThinPlateSpline`, ``[grid_size**2, 2]``, row-major.

    The points run from -1 to 1 inclusive on both axes, whatever the sampler's ``align_corners``.
    """
    axis = pixel_centres(grid_size, align_corners=True, dtype=dtype)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
