"""Distorted-MNIST generators: shapes, quantisation, determinism, parameter distributions, and the
geometry tying the stored parameters to the images (the data and transformer conventions pinned together)."""

import math

import pytest
import torch
from scipy import stats

from stn_repro.data import (
    DISTORTED_SET_NAMES,
    IMAGE_SIZE,
    SET_NAMES,
    addition_pairs,
    colocalisation,
    distort,
    quantise,
    synthetic_mnist,
)
from stn_repro.transformers import (
    affine_inverse,
    base_grid,
    get_transform,
    pixels_to_normalised,
    projective_inverse,
    sample,
    tps_control_points,
)

FAMILY_KEY = {
    "r": "affine",
    "rts": "affine",
    "p": "projective",
    "e": "tps",
    "tc": "affine",
    "p_4px": "projective",
    "p_diagonal": "projective",
    "p_digit_frame": "projective",
}
CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


@pytest.fixture(scope="module")
def mnist():
    return synthetic_mnist(num_train=256, num_test=64, seed=0)


@pytest.fixture(scope="module")
def many(mnist):
    """A few thousand samples of every set (the synthetic digits repeated): enough for distribution tests."""
    digits = as_digits(mnist.train_images).repeat(12, 1, 1, 1)  # 3072
    return {
        name: distort(name, digits, torch.Generator().manual_seed(7), mnist.train_images)
        for name in DISTORTED_SET_NAMES
    }


def as_digits(images_uint8):
    return images_uint8.unsqueeze(1).float() / 255


def dot_digit(x_px, y_px):
    """A 'digit' that is one small Gaussian dot centred at pixel position (x_px, y_px) (image spans [0, 28])."""
    ys, xs = torch.meshgrid(torch.arange(28) + 0.5, torch.arange(28) + 0.5, indexing="ij")
    return torch.exp(-((xs - x_px) ** 2 + (ys - y_px) ** 2) / (2 * 1.2**2)).view(1, 1, 28, 28)


def centroid_px(images):
    """Intensity centroid (x, y) in pixel positions (image spans [0, S]) of ``[B, 1, S, S]`` images."""
    size = images.shape[-1]
    centres = torch.arange(size) + 0.5
    mass = images.sum(dim=(1, 2, 3))
    x = (images.sum(dim=(1, 2)) * centres).sum(-1) / mass
    y = (images.sum(dim=(1, 3)) * centres).sum(-1) / mass
    return torch.stack([x, y], dim=-1)


# --- shapes, levels, determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", DISTORTED_SET_NAMES)
def test_each_set_has_its_size_dtype_and_8_bit_levels(mnist, set_name):
    digits = as_digits(mnist.train_images[:16])
    images, params = distort(set_name, digits, torch.Generator().manual_seed(0), mnist.train_images)
    size = IMAGE_SIZE[set_name]
    assert images.shape == (16, 1, size, size) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, (images * 255).round() / 255, rtol=0, atol=0)
    assert all(value.device.type == "cpu" and len(value) == 16 for value in params.values())
    assert images.flatten(1).amax(1).min() > 0.5  # no sample lost its digit


def test_image_sizes_follow_the_spec():
    assert IMAGE_SIZE == {
        "r": 28,
        "rts": 42,
        "p": 28,
        "e": 28,
        "tc": 60,
        "p_4px": 28,
        "p_diagonal": 28,
        "p_digit_frame": 28,
    }
    assert set(DISTORTED_SET_NAMES) == set(IMAGE_SIZE) and "p_4px" not in SET_NAMES  # a study set


@pytest.mark.parametrize("set_name", DISTORTED_SET_NAMES)
def test_same_seed_same_images_and_params_other_seed_differs(mnist, set_name):
    digits = as_digits(mnist.train_images[:32])

    def run(seed):
        return distort(set_name, digits, torch.Generator().manual_seed(seed), mnist.train_images)

    (a, params_a), (b, params_b), (c, _) = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[key], params_b[key]) for key in params_a)


def test_addition_and_colocalisation_sizes_and_determinism(mnist):
    digits = as_digits(mnist.train_images[:8])
    pairs, params = addition_pairs(digits, digits.flip(0), torch.Generator().manual_seed(0))
    again, _ = addition_pairs(digits, digits.flip(0), torch.Generator().manual_seed(0))
    assert pairs.shape == (8, 2, 42, 42) and torch.equal(pairs, again)
    assert params["scale"].shape == (8, 2) and params["centre_px"].shape == (8, 2, 2)
    images, boxes, _ = colocalisation(digits, torch.Generator().manual_seed(0), mnist.train_images)
    assert images.shape == (8, 1, 84, 84) and boxes.shape == (8, 4)


# --- parameter distributions (spec Sect. 2) -----------------------------------------------------------------


def test_r_angles_are_uniform_on_plus_minus_90(many):
    angle = many["r"][1]["angle_deg"]
    assert stats.kstest(angle.numpy(), "uniform", args=(-90, 180)).pvalue > 0.01
    assert angle.abs().max() <= 90


def test_rts_angle_scale_uniform_and_the_scaled_box_inside_the_canvas(many):
    params = many["rts"][1]
    assert stats.kstest(params["angle_deg"].numpy(), "uniform", args=(-45, 90)).pvalue > 0.01
    scale = params["scale"]
    assert stats.kstest(scale.numpy(), "uniform", args=(0.7, 0.5)).pvalue > 0.01
    half = 14 * scale.unsqueeze(1)
    centre = params["centre_px"]
    assert (centre - half >= -1e-4).all() and (centre + half <= 42 + 1e-4).all()
    # Uniform over the allowed positions: the position within the free range is uniform on [0, 1].
    free = (centre - half) / (42 - 2 * half)
    for axis in range(2):
        assert stats.kstest(free[:, axis].numpy(), "uniform").pvalue > 0.01


@pytest.mark.parametrize(("set_name", "std_px"), [("p", 5.0), ("p_4px", 4.0), ("p_digit_frame", 5.0)])
def test_p_scale_uniform_corner_offsets_about_their_std_and_quads_convex(many, set_name, std_px):
    params = many[set_name][1]
    assert stats.kstest(params["scale"].numpy(), "uniform", args=(0.75, 0.25)).pvalue > 0.01
    offsets = params["corner_offsets_px"]
    assert offsets.shape == (3072, 4, 2)
    # 24,576 offsets: the std's standard error is ~0.03 px; folded draws are redrawn (5 px: std 4.99)
    assert abs(offsets.std() - std_px) < 0.15 and offsets.mean().abs() < 0.15
    quads = get_transform("projective").transform_points(params["projective"], CORNERS)
    edges = quads.roll(-1, dims=1) - quads
    turns = edges[..., 0] * edges.roll(-1, dims=1)[..., 1] - edges[..., 1] * edges.roll(-1, dims=1)[..., 0]
    assert (turns > 0).all()


def test_p_4px_draws_the_p_offsets_scaled_by_four_fifths(mnist):
    # The same generator state draws the same normal numbers; only the std they are scaled by differs. Redraws
    # of folded quadrilaterals (rarer at 4 px) are the only place the two streams may part, so compare the
    # first draw of samples neither set redrew.
    digits = as_digits(mnist.train_images[:64])
    _, p = distort("p", digits, torch.Generator().manual_seed(11))
    _, p_4px = distort("p_4px", digits, torch.Generator().manual_seed(11))
    torch.testing.assert_close(p_4px["scale"], p["scale"], rtol=0, atol=0)
    same = (p_4px["corner_offsets_px"] / 4.0 - p["corner_offsets_px"] / 5.0).abs().amax(dim=(1, 2)) < 1e-6
    assert same.float().mean() > 0.9


def test_p_diagonal_moves_each_corner_along_its_diagonal_by_one_n0_5px_stretch(many):
    params = many["p_diagonal"][1]
    assert stats.kstest(params["scale"].numpy(), "uniform", args=(0.75, 0.25)).pvalue > 0.01
    stretch, offsets = params["corner_stretch_px"], params["corner_offsets_px"]
    assert stretch.shape == (3072, 4) and offsets.shape == (3072, 4, 2)
    # 12,288 stretches: the std's standard error is ~0.03 px (folded draws, rarer than in P, are redrawn)
    assert abs(stretch.std() - 5.0) < 0.1 and stretch.mean().abs() < 0.15
    # Each offset is the stretch times the corner's outward unit diagonal: top-left (-1, -1) / sqrt(2), ...
    torch.testing.assert_close(offsets, stretch.unsqueeze(-1) * CORNERS / 2**0.5, rtol=0, atol=1e-6)
    # so the rms displacement is 5 px, not the 7.07 px of independent x and y offsets
    assert abs(offsets.norm(dim=-1).pow(2).mean().sqrt() - 5.0) < 0.1
    expected = (CORNERS + pixels_to_normalised(offsets, 28)) / params["scale"].view(-1, 1, 1)
    mapped = get_transform("projective").transform_points(params["projective"], CORNERS)
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-4)


def test_p_diagonal_positive_stretch_moves_the_sampled_corner_outwards_by_hand():
    # One digit, and a generator state whose draw we read back: a corner stretched by +s px along its
    # diagonal samples the digit at (corner + s (+-1, +-1) / sqrt(2) px) / scale, farther from the centre.
    digits = torch.zeros(1, 1, 28, 28)
    _, params = distort("p_diagonal", digits, torch.Generator().manual_seed(5))
    s, scale = params["corner_stretch_px"][0], float(params["scale"][0])
    top_left = get_transform("projective").transform_points(params["projective"], CORNERS)[0, 0]
    step = 2.0 * float(s[0]) / 2**0.5 / 28  # normalised length of each component of the stretch
    torch.testing.assert_close(top_left, torch.tensor([-1.0 - step, -1.0 - step]) / scale, rtol=0, atol=1e-5)


def test_p_digit_frame_adds_the_offsets_after_the_scaling(many):
    params = many["p_digit_frame"][1]
    scale = params["scale"].view(-1, 1, 1)
    expected = CORNERS / scale + pixels_to_normalised(params["corner_offsets_px"], 28)
    mapped = get_transform("projective").transform_points(params["projective"], CORNERS)
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-4)
    # and differs from the spec reading, whose offsets are divided by the scale (scale < 1: larger moves)
    spec = (CORNERS + pixels_to_normalised(params["corner_offsets_px"], 28)) / scale
    assert (mapped - spec).abs().amax() > 0.01


def test_p_readings_share_the_spec_draws(mnist):
    # The same generator state draws the same scales and normal numbers: the digit-frame reading moves the same
    # offsets as P (only where they are added differs); the diagonal reading draws 4 numbers per image, not 8.
    digits = as_digits(mnist.train_images[:64])
    _, p = distort("p", digits, torch.Generator().manual_seed(11))
    _, frame = distort("p_digit_frame", digits, torch.Generator().manual_seed(11))
    _, diagonal = distort("p_diagonal", digits, torch.Generator().manual_seed(11))
    torch.testing.assert_close(frame["scale"], p["scale"], rtol=0, atol=0)
    torch.testing.assert_close(diagonal["scale"], p["scale"], rtol=0, atol=0)
    same = (frame["corner_offsets_px"] - p["corner_offsets_px"]).abs().amax(dim=(1, 2)) < 1e-6
    assert same.float().mean() > 0.9


def test_e_scale_uniform_and_control_offsets_about_1_5px(many):
    params = many["e"][1]
    assert stats.kstest(params["scale"].numpy(), "uniform", args=(0.75, 0.25)).pvalue > 0.01
    offsets = params["control_offsets_px"]
    assert offsets.shape == (3072, 16, 2)
    assert abs(offsets.std() - 1.5) < 0.03 and offsets.mean().abs() < 0.03


def test_tc_has_six_6x6_patches_inside_the_canvas(many):
    _, params = many["tc"]
    assert params["clutter_xy_px"].shape == (3072, 6, 2)
    assert params["clutter_xy_px"].min() >= 0 and params["clutter_xy_px"].max() <= 54
    corner = params["centre_px"] - 14
    assert corner.min() >= 0 and corner.max() <= 32 and torch.equal(corner, corner.round())


# --- stored parameters reproduce the images -----------------------------------------------------------------


@pytest.mark.parametrize("set_name", ["r", "rts", "p", "e", "p_4px", "p_diagonal", "p_digit_frame"])
def test_stored_family_params_regenerate_the_image(mnist, set_name):
    digits = as_digits(mnist.train_images[:64])
    images, params = distort(set_name, digits, torch.Generator().manual_seed(3))
    family = get_transform(FAMILY_KEY[set_name])
    size = IMAGE_SIZE[set_name]
    regenerated = quantise(sample(digits, family.grid(params[FAMILY_KEY[set_name]], (size, size))))
    assert torch.equal(regenerated, images)


@pytest.mark.parametrize("set_name", ["p", "p_4px"])
def test_p_homography_maps_the_output_corners_to_the_moved_scaled_source_corners(many, set_name):
    params = many[set_name][1]
    expected = (CORNERS + pixels_to_normalised(params["corner_offsets_px"], 28)) / params["scale"].view(
        -1, 1, 1
    )
    mapped = get_transform("projective").transform_points(params["projective"], CORNERS)
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-4)


def test_e_tps_params_are_the_scaled_perturbed_control_grid(many):
    params = many["e"][1]
    expected = (tps_control_points(4) + pixels_to_normalised(params["control_offsets_px"], 28)) / params[
        "scale"
    ].view(-1, 1, 1)
    torch.testing.assert_close(params["tps"], expected.reshape(-1, 32))


def test_r_rotates_counter_clockwise_about_the_centre_as_documented():
    # A dot right of the centre turns counter-clockwise on screen (y down): to above the centre at +90 deg.
    dot = dot_digit(22.0, 14.0).expand(512, -1, -1, -1)
    images, params = distort("r", dot, torch.Generator().manual_seed(0))
    angle = torch.deg2rad(params["angle_deg"].double())
    expected = torch.stack([14 + 8 * torch.cos(angle), 14 - 8 * torch.sin(angle)], dim=-1)
    torch.testing.assert_close(centroid_px(images.double()), expected, rtol=0, atol=0.2)


def test_rts_puts_the_digit_centre_at_centre_px_with_its_scale_and_angle():
    dot = dot_digit(14.0, 8.0).expand(512, -1, -1, -1)  # 6 px above the digit centre
    images, params = distort("rts", dot, torch.Generator().manual_seed(0))
    angle = torch.deg2rad(params["angle_deg"].double())
    radius = 6 * params["scale"].double()  # pixel lengths scale by s (28 s px in the canvas)
    # Straight up, (0, -r), turned counter-clockwise on screen by angle: (-r sin, -r cos).
    expected = params["centre_px"].double() + torch.stack(
        [-radius * torch.sin(angle), -radius * torch.cos(angle)], -1
    )
    torch.testing.assert_close(centroid_px(images.double()), expected, rtol=0, atol=0.25)


def test_tc_is_the_digit_pasted_whole_plus_exactly_six_max_combined_patches(mnist):
    digits_uint8 = mnist.train_images[:24]
    images, params = distort(
        "tc", as_digits(digits_uint8), torch.Generator().manual_seed(1), mnist.train_images
    )
    rebuilt = torch.zeros(24, 60, 60)
    for b in range(24):
        x0, y0 = (params["centre_px"][b] - 14).long().tolist()
        rebuilt[b, y0 : y0 + 28, x0 : x0 + 28] = digits_uint8[b].float() / 255
        for k in range(6):
            px, py = params["clutter_xy_px"][b, k].long().tolist()
            cx, cy = params["clutter_crop_xy_px"][b, k].long().tolist()
            patch = mnist.train_images[params["clutter_index"][b, k], cy : cy + 6, cx : cx + 6].float() / 255
            rebuilt[b, py : py + 6, px : px + 6] = torch.maximum(rebuilt[b, py : py + 6, px : px + 6], patch)
    torch.testing.assert_close(images[:, 0], rebuilt, rtol=0, atol=1e-6)


def test_colocalisation_box_holds_the_digit_and_clutter_has_16_patches(mnist):
    digits_uint8 = mnist.train_images[:16]
    images, boxes, _ = colocalisation(as_digits(digits_uint8), torch.Generator().manual_seed(2))
    assert torch.equal(boxes[:, 2:] - boxes[:, :2], torch.full((16, 2), 28.0))
    for b in range(16):
        x0, y0, x1, y1 = boxes[b].long().tolist()
        torch.testing.assert_close(
            images[b, 0, y0:y1, x0:x1], digits_uint8[b].float() / 255, rtol=0, atol=1e-6
        )
        assert images[b].sum() == pytest.approx(images[b, 0, y0:y1, x0:x1].sum())
    _, _, cluttered = colocalisation(
        as_digits(digits_uint8), torch.Generator().manual_seed(2), mnist.train_images, num_clutter=16
    )
    assert cluttered["clutter_xy_px"].shape == (16, 16, 2) and cluttered["clutter_xy_px"].max() <= 78


def test_addition_channels_are_independent_rts_of_each_digit(mnist):
    a, b = as_digits(mnist.train_images[:16]), as_digits(mnist.train_images[16:32])
    pairs, params = addition_pairs(a, b, torch.Generator().manual_seed(4))
    affine = get_transform("affine")
    for channel, digits in enumerate((a, b)):
        expected = quantise(sample(digits, affine.grid(params["affine"][:, channel], (42, 42))))
        assert torch.equal(pairs[:, channel : channel + 1], expected)
    assert not torch.equal(params["angle_deg"][:, 0], params["angle_deg"][:, 1])


# --- warping back with the stored parameters recovers the digit ------------------------------------------

# Mean absolute error of the recovered digit, over the digit frame. Two bilinear resamplings (and, for RTS,
# a down-scaling to 0.7) blur the strokes: errors are about 0.025-0.04; a wrong convention (the forward map
# used as its own inverse) or an empty image gives 0.12-0.16 on these digits.
RECOVERY_TOLERANCE = 0.05


def recover(set_name, images, params):
    if set_name in ("r", "rts"):
        return sample(images, get_transform("affine").grid(affine_inverse(params["affine"]), (28, 28)))
    if set_name == "p":
        return sample(
            images, get_transform("projective").grid(projective_inverse(params["projective"]), (28, 28))
        )
    # E: the TPS has no closed-form inverse; solve T(q) = p for the target point q of every digit pixel
    # centre p by fixed-point iteration q <- q + s (p - T(q)) (T is about p / s, a gentle perturbation of it).
    tps = get_transform("tps")
    source = base_grid((28, 28), dtype=torch.float64).reshape(-1, 2)
    tps_params, scale = params["tps"].double(), params["scale"].double().view(-1, 1, 1)
    target = source * scale
    for _ in range(15):
        residual = source - tps.transform_points(tps_params, target)
        target = target + scale * residual
    assert (residual.abs() < 1e-3).float().mean() > 0.99
    return sample(images, target.float().view(-1, 28, 28, 2))


@pytest.mark.parametrize("set_name", ["r", "rts", "p", "e"])
def test_warping_back_with_the_stored_params_recovers_the_digit(mnist, set_name):
    # E's numerical inverse costs a TPS evaluation per sample and iteration: fewer samples there.
    digits = as_digits(mnist.train_images[: 32 if set_name == "e" else 128])
    images, params = distort(set_name, digits, torch.Generator().manual_seed(11))
    recovered = recover(set_name, images, params)
    error = (recovered - digits).abs().mean().item()
    assert error < RECOVERY_TOLERANCE
    # The same test fails for a convention bug: reading the map the wrong way round.
    family = FAMILY_KEY[set_name]
    wrong = sample(images, get_transform(family).grid(params[family], (28, 28)))
    assert (wrong - digits).abs().mean().item() > 2.5 * error


# --- errors and devices -------------------------------------------------------------------------------------


def test_unknown_set_and_missing_clutter_and_bad_digits_give_clear_errors(mnist):
    digits = as_digits(mnist.train_images[:2])
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"unknown distorted-MNIST set 'x'; known: r, rts, p, e, tc"):
        distort("x", digits, generator)
    with pytest.raises(ValueError, match="'tc' needs clutter_source"):
        distort("tc", digits, generator)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        distort("r", digits[:, 0], generator)
    with pytest.raises(TypeError, match="float in"):
        distort("r", mnist.train_images[:2].unsqueeze(1), generator)
    with pytest.raises(ValueError, match="clutter_source must be"):
        distort("tc", digits, generator, torch.zeros(3, 20, 20))


@pytest.mark.gpu
def test_gpu_draws_the_same_params_and_nearly_the_same_images(mnist):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    digits = as_digits(mnist.train_images[:64])
    for set_name in SET_NAMES:
        cpu, cpu_params = distort(set_name, digits, torch.Generator().manual_seed(0), mnist.train_images)
        gpu, gpu_params = distort(
            set_name, digits.cuda(), torch.Generator().manual_seed(0), mnist.train_images.cuda()
        )
        assert gpu.device.type == "cuda", set_name
        for key in cpu_params:
            assert gpu_params[key].device.type == "cpu", f"{set_name}: params[{key!r}] is not on the CPU"
            assert torch.equal(cpu_params[key], gpu_params[key]), f"{set_name}: params[{key!r}] differ"
        # Float rounding may move a pixel across a quantisation boundary: at most one level, rarely.
        difference = (gpu.cpu() - cpu).abs()
        changed = (difference > 0).float().mean().item()
        largest = difference.max().item() * 255
        assert largest <= 1 + 1e-4 and changed < 0.01, (
            f"{set_name}: {changed:.3%} of pixels differ, by up to {largest:.2f} grey levels"
        )


def test_angles_are_degrees_not_radians(many):
    assert many["r"][1]["angle_deg"].abs().max() > math.pi
