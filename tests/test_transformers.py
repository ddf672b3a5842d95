"""Behaviour of the spatial transformer library: identities, known warps, gradients, errors."""

import math

import pytest
import torch
from torch import nn

from stn_repro.transformers import (
    COLLAPSED_SPREAD,
    FAMILIES,
    ParallelTransformers,
    SpatialTransformer,
    affine_inverse,
    base_grid,
    cnn_localisation,
    get_transform,
    localisation_spread,
    mlp_localisation,
    projective_from_points,
    projective_inverse,
    sample,
    similarity_to_affine,
)

# A fixed attention scale other than 1 has no identity map (its rest parameters are a centred crop), so the
# identity tests use scale 1 and the gradient tests the CUB setting, 0.5.
IDENTITY_FAMILIES = [
    ("affine", {}),
    ("attention", {}),
    ("attention", {"scale": 1.0}),
    ("projective", {}),
    ("tps", {}),
]
FAMILY_OPTIONS = [
    ("affine", {}),
    ("attention", {}),
    ("attention", {"scale": 0.5}),
    ("projective", {}),
    ("tps", {}),
]
SIZES = [(5, 5), (6, 6), (7, 10), (28, 28), (42, 42), (1, 4)]
# grid_sample re-derives pixel indices from normalised coordinates in the input's dtype, so an identity warp
# is exact only to that dtype's rounding, which grows with the image side (see the sampler's docstring).
# In float64 that is < 1e-12 (the conventions are exact); in float32 about side * 2**-24 per pixel.
ROUNDING = {"rtol": 0.0, "atol": 1e-5}


def family_id(param):
    name, options = param
    return name + "".join(f"-{k}{v}" for k, v in options.items())


@pytest.mark.parametrize("family_spec", IDENTITY_FAMILIES, ids=family_id)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_identity_params_give_the_identity_grid_and_reproduce_the_input(family_spec, align_corners, size):
    name, options = family_spec
    family = get_transform(name, align_corners=align_corners, **options)
    params = family.identity().expand(3, -1)
    grid = family.grid(params, size)
    assert torch.equal(grid, base_grid(size, align_corners).expand(3, -1, -1, -1))  # bit for bit
    image = torch.rand(3, 2, *size, dtype=torch.float64)
    grid64 = family.grid(family.identity(torch.float64).expand(3, -1), size)
    torch.testing.assert_close(sample(image, grid64, align_corners=align_corners), image, rtol=0, atol=1e-12)
    warped = sample(image.float(), grid, align_corners=align_corners)
    # float32: unnormalising x to pixels, ((x + 1) / 2) * (W - 1) with align_corners, rounds twice, so a
    # coordinate can be off by about 2 (W - 1) ulps of 1 (one bound measured at 1.04x the single-rounding one).
    torch.testing.assert_close(warped, image.float(), rtol=0, atol=max(size) * 2**-22)


@pytest.mark.parametrize("family_spec", IDENTITY_FAMILIES, ids=family_id)
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_with_a_smaller_output_picks_the_coinciding_pixels(family_spec, align_corners):
    # With align_corners=False the centres of a 5 px output fall on pixels 1, 4, ..., 13 of a 15 px input;
    # with True, the centres of a 5 px output fall on pixels 0, 3, ..., 12 of a 13 px input.
    name, options = family_spec
    family = get_transform(name, align_corners=align_corners, **options)
    n_in = 13 if align_corners else 15
    image = torch.rand(2, 3, n_in, n_in)
    warped = sample(image, family.grid(family.identity().expand(2, -1), (5, 5)), align_corners=align_corners)
    picked = image[..., 0::3, 0::3] if align_corners else image[..., 1::3, 1::3]
    torch.testing.assert_close(warped, picked, **ROUNDING)


def test_nearest_identity_is_bit_exact():
    image = torch.rand(2, 1, 9, 12)
    grid = get_transform("affine").grid(torch.tensor([[1.0, 0, 0, 0, 1, 0]]).expand(2, -1), (9, 12))
    assert torch.equal(sample(image, grid, mode="nearest"), image)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n", [6, 7])
def test_affine_rotation_by_90_degrees_equals_rot90(align_corners, n):
    image = torch.rand(2, 3, n, n)
    params = similarity_to_affine(torch.full((2,), math.pi / 2), torch.ones(2), torch.zeros(2, 2))
    grid = get_transform("affine", align_corners=align_corners).grid(params, (n, n))
    rotated = sample(image, grid, align_corners=align_corners)
    # torch.rot90 with k=1 on (H, W) is counter-clockwise as displayed, the suite's positive angle.
    torch.testing.assert_close(rotated, torch.rot90(image, 1, dims=(-2, -1)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_one_pixel_translation_is_a_shift(align_corners):
    h, w = 8, 11
    image = torch.rand(1, 1, h, w)
    step_x = 2 / (w - 1) if align_corners else 2 / w
    step_y = 2 / (h - 1) if align_corners else 2 / h
    # Content moves one pixel right and one down: each target pixel reads the source one up and to the left.
    params = similarity_to_affine(torch.zeros(1), torch.ones(1), torch.tensor([[step_x, step_y]]))
    moved = sample(
        image,
        get_transform("affine", align_corners=align_corners).grid(params, (h, w)),
        align_corners=align_corners,
    )
    torch.testing.assert_close(moved[..., 1:, 1:], image[..., :-1, :-1], rtol=0, atol=1e-5)
    assert moved[..., 0, :].abs().max() < 1e-6 and moved[..., :, 0].abs().max() < 1e-6  # zeros come in


def test_attention_is_scale_and_shift():
    family = get_transform("attention")
    params = torch.tensor([[0.5, 0.25, -0.5]])
    expected = base_grid((6, 4)) * 0.5 + torch.tensor([0.25, -0.5])
    torch.testing.assert_close(family.grid(params, (6, 4))[0], expected)
    fixed = get_transform("attention", scale=0.5)
    assert fixed.num_params == 2
    torch.testing.assert_close(fixed.grid(params[:, 1:], (6, 4)), family.grid(params, (6, 4)))


def test_tps_moved_by_an_affine_map_equals_that_affine_grid():
    tps = get_transform("tps")
    affine = get_transform("affine")
    theta = torch.tensor([[0.9, -0.2, 0.1, 0.3, 1.1, -0.05]], dtype=torch.float64)
    control = tps.control_points.to(torch.float64)
    moved = affine.transform_points(theta, control).reshape(1, -1)
    torch.testing.assert_close(tps.grid(moved, (13, 9)), affine.grid(theta, (13, 9)), rtol=0, atol=1e-10)


def test_tps_passes_through_its_control_points():
    tps = get_transform("tps", grid_size=4)
    params = tps.identity().unsqueeze(0) + 0.1 * torch.randn(
        2, 32, generator=torch.Generator().manual_seed(0)
    )
    mapped = tps.transform_points(params, tps.control_points.float())
    torch.testing.assert_close(mapped, params.view(2, 16, 2), rtol=0, atol=1e-5)


def test_tps_grid_agrees_with_transform_points():
    tps = get_transform("tps", grid_size=3)
    params = tps.identity().unsqueeze(0) + 0.05 * torch.randn(
        3, 18, generator=torch.Generator().manual_seed(1)
    )
    points = base_grid((7, 5)).reshape(-1, 2)
    torch.testing.assert_close(
        tps.grid(params, (7, 5)).reshape(3, -1, 2), tps.transform_points(params, points)
    )


def test_projective_without_perspective_terms_is_the_affine():
    theta = torch.tensor([[1.1, 0.2, -0.1, -0.3, 0.8, 0.2]])
    homography = torch.cat([theta, torch.zeros(1, 2)], dim=1)
    torch.testing.assert_close(
        get_transform("projective").grid(homography, (9, 9)), get_transform("affine").grid(theta, (9, 9))
    )


def test_projective_from_points_maps_target_points_onto_source_points_and_inverts():
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(4, -1, -1)
    source = corners + 0.2 * torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(2))
    params = projective_from_points(corners, source)
    family = get_transform("projective")
    torch.testing.assert_close(family.transform_points(params, corners), source, rtol=0, atol=1e-5)
    back = family.transform_points(projective_inverse(params), source)
    torch.testing.assert_close(back, corners, rtol=0, atol=1e-5)


def test_affine_inverse_undoes_the_map():
    params = similarity_to_affine(torch.tensor([0.3]), torch.tensor([0.7]), torch.tensor([[0.1, -0.2]]))
    points = torch.rand(1, 10, 2) * 2 - 1
    affine = get_transform("affine")
    round_trip = affine.transform_points(affine_inverse(params), affine.transform_points(params, points))
    torch.testing.assert_close(round_trip, points)


def test_similarity_scale_and_translation_move_content_as_documented():
    # Content scaled by 0.5 and moved by (+0.5, 0): the source centre (0, 0) appears at target (0.5, 0).
    params = similarity_to_affine(torch.zeros(1), torch.full((1,), 0.5), torch.tensor([[0.5, 0.0]]))
    source = get_transform("affine").transform_points(params, torch.tensor([[0.5, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(source[0], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))


# --- gradients -----------------------------------------------------------------------------------------


def random_params(family, batch, scale=0.1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, family.num_params, generator=generator, dtype=torch.float64)
    return (family.identity(torch.float64) + scale * noise).requires_grad_()


@pytest.mark.parametrize("family_spec", FAMILY_OPTIONS, ids=family_id)
def test_grid_gradcheck(family_spec):
    name, options = family_spec
    family = get_transform(name, **options)
    params = random_params(family, 2)
    assert torch.autograd.gradcheck(lambda p: family.grid(p, (4, 5)), (params,))


@pytest.mark.parametrize("mode", ["bilinear"])
def test_sampler_gradcheck_wrt_input_and_grid(mode):
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 2, 5, 6, dtype=torch.float64, generator=generator).requires_grad_()
    # Random coordinates, some outside [-1, 1]: zero padding must differentiate too.
    grid = (torch.rand(2, 4, 3, 2, dtype=torch.float64, generator=generator) * 2.4 - 1.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g: sample(x, g, mode=mode), (image, grid))


@pytest.mark.parametrize("family_spec", FAMILY_OPTIONS, ids=family_id)
def test_whole_module_gradcheck_wrt_input_and_parameters(family_spec):
    name, options = family_spec
    family = get_transform(name, **options)
    torch.manual_seed(0)
    loc = mlp_localisation((1, 6, 6), family.identity(), hidden=(5,)).double()
    nn.init.normal_(loc[-1].weight, std=0.05)  # away from the identity so the warp is not trivial
    st = SpatialTransformer(loc, family, output_size=(4, 5)).double()
    image = torch.rand(2, 1, 6, 6, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(st, (image,))
    names = [n for n, _ in st.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in st.parameters())

    def as_function_of_weights(*weights):
        return torch.func.functional_call(st, dict(zip(names, weights, strict=True)), (image.detach(),))

    assert torch.autograd.gradcheck(as_function_of_weights, values)


# --- localisation nets and the module ---------------------------------------------------------------------


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_new_localisation_nets_predict_the_identity(family_name):
    family = get_transform(family_name)
    image = torch.rand(4, 1, 28, 28)
    for loc in (
        mlp_localisation((1, 28, 28), family.identity()),
        cnn_localisation((1, 28, 28), family.identity()),
    ):
        torch.testing.assert_close(loc(image), family.identity().expand(4, -1), rtol=0, atol=0)


def test_cnn_localisation_matches_the_paper_layout():
    loc = cnn_localisation((1, 60, 60), torch.zeros(6))
    kinds = [type(m).__name__ for m in loc]
    assert kinds == [
        "AvgPool2d",
        "Conv2d",
        "MaxPool2d",  # before its ReLU: the same result on a quarter of the elements
        "ReLU",
        "Conv2d",
        "ReLU",
        "Flatten",
        "Linear",
        "ReLU",
        "RegressionHead",
    ]
    assert loc[-3].in_features == 20 * 9 * 9  # 60 -> 30 -> 26 -> 13 -> 9
    with pytest.raises(ValueError, match="too small"):
        cnn_localisation((1, 8, 8), torch.zeros(6))


def test_module_at_initialisation_is_the_identity_and_records_params():
    family = get_transform("affine")
    st = SpatialTransformer(cnn_localisation((1, 28, 28), family.identity()), family)
    image = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(st(image), image, **ROUNDING)
    torch.testing.assert_close(st.last_params, family.identity().expand(3, -1))


def test_module_output_size_and_feature_maps():
    family = get_transform("tps")
    st = SpatialTransformer(mlp_localisation((16, 9, 9), family.identity(), hidden=(32, 32)), family, (5, 7))
    assert st(torch.rand(2, 16, 9, 9)).shape == (2, 16, 5, 7)


def test_batch_elements_are_independent():
    family = get_transform("projective")
    torch.manual_seed(0)
    loc = mlp_localisation((1, 10, 10), family.identity(), hidden=(8,))
    nn.init.normal_(loc[-1].weight, std=0.1)
    st = SpatialTransformer(loc, family)
    images = torch.rand(3, 1, 10, 10)
    base = st(images)
    changed = images.clone()
    changed[1] = torch.rand(1, 10, 10)
    out = st(changed)
    torch.testing.assert_close(out[[0, 2]], base[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(out[1], base[1])


def test_parallel_transformers_with_a_shared_localisation_net():
    family = get_transform("attention", scale=0.5)
    tiling = torch.tensor([-0.5, -0.5, 0.5, 0.5])  # two crops, top-left and bottom-right quarters
    st = SpatialTransformer(
        mlp_localisation((3, 8, 8), tiling, hidden=(4,)), family, (4, 4), num_transforms=2
    )
    image = torch.rand(2, 3, 8, 8)
    crops = st(image)
    assert crops.shape == (2, 2, 3, 4, 4) and st.last_params.shape == (2, 2, 2)
    torch.testing.assert_close(crops[:, 0], image[..., :4, :4], **ROUNDING)
    torch.testing.assert_close(crops[:, 1], image[..., 4:, 4:], **ROUNDING)


def test_parallel_transformers_concatenate_channels_and_compose_in_series():
    family = get_transform("affine")
    make = lambda: SpatialTransformer(mlp_localisation((2, 6, 6), family.identity(), hidden=(4,)), family)  # noqa: E731
    pair = ParallelTransformers([make(), make()])
    image = torch.rand(2, 2, 6, 6)
    out = pair(image)
    assert out.shape == (2, 4, 6, 6)
    torch.testing.assert_close(out, torch.cat([image, image], 1), **ROUNDING)
    torch.testing.assert_close(nn.Sequential(make(), make())(image), image, **ROUNDING)


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown transform family 'similarity'.*affine, attention, projective, tps"
    ):
        get_transform("similarity")


def test_bad_options_and_shapes_give_clear_errors():
    with pytest.raises(TypeError, match="affine: bad options"):
        get_transform("affine", grid_size=4)
    with pytest.raises(ValueError, match=r"params must have shape \[batch, 6\], got \(2, 4\)"):
        get_transform("affine").grid(torch.zeros(2, 4), (3, 3))
    with pytest.raises(ValueError, match=r"params must have shape \[batch, 32\]"):
        get_transform("tps").grid(torch.zeros(32), (3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        get_transform("affine").grid(torch.zeros(1, 6, dtype=torch.long), (3, 3))
    with pytest.raises(ValueError, match="size must be"):
        get_transform("affine").grid(torch.zeros(1, 6), (0, 3))
    with pytest.raises(ValueError, match="positive number"):
        get_transform("attention", scale=-1.0)
    with pytest.raises(ValueError, match="unknown sampling mode 'bicubic'"):
        sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), mode="bicubic")
    with pytest.raises(ValueError, match="grid must be"):
        sample(torch.zeros(2, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    family = get_transform("affine")
    st = SpatialTransformer(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), family)
    with pytest.raises(ValueError, match=r"localisation net returned \(1, 3\); affine .* needs \[1, 6\]"):
        st(torch.zeros(1, 1, 2, 2))


def test_the_shared_identity_grid_is_built_once_and_equals_base_grid():
    from stn_repro.transformers.grids import base_grid, shared_base_grid

    first = shared_base_grid((5, 7), False, torch.float64, torch.device("cpu"))
    assert shared_base_grid((5, 7), False, torch.float64, torch.device("cpu")) is first
    assert torch.equal(first, base_grid((5, 7), False, dtype=torch.float64))


def test_a_grid_first_built_under_inference_mode_still_trains():
    family = get_transform("affine")
    with torch.inference_mode():  # the shared identity grid of this size is created here
        family.grid(family.identity().unsqueeze(0), (13, 11))
    params = family.identity().unsqueeze(0).requires_grad_()
    family.grid(params, (13, 11)).sum().backward()  # fails if the shared grid were an inference tensor
    assert params.grad is not None


def test_localisation_spread_is_zero_exactly_when_the_localisation_net_ignores_its_input():
    torch.manual_seed(0)
    family = get_transform("affine")
    loc = mlp_localisation((1, 6, 6), family.identity(), hidden=(5,))
    model = nn.Sequential(SpatialTransformer(loc, family), nn.Flatten(), nn.Linear(36, 3))
    images = torch.randint(0, 256, (16, 1, 6, 6), dtype=torch.uint8)
    # A fresh regression head has zero weights: every image gets the identity.
    assert localisation_spread(model, images) == [0.0]
    nn.init.normal_(loc[-1].weight, std=0.1)
    spread = localisation_spread(model, images)
    assert len(spread) == 1 and spread[0] > 1e-3
    # Every hidden ReLU dead (a large negative bias): the head sees zeros, one transform for all images.
    with torch.no_grad():
        loc[1].bias.fill_(-1e3)
    assert (
        localisation_spread(model, images) == [0.0]
        and localisation_spread(model, images)[0] < COLLAPSED_SPREAD
    )
    model.train()
    localisation_spread(model, images)
    assert model.training  # the mode is restored
    parallel = ParallelTransformers(
        [
            SpatialTransformer(mlp_localisation((1, 6, 6), family.identity(), hidden=(4,)), family)
            for _ in range(2)
        ]
    )
    assert len(localisation_spread(parallel, images)) == 2
    assert localisation_spread(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), images) == []
    with pytest.raises(ValueError, match="at least 2 images"):
        localisation_spread(model, images[:1])
