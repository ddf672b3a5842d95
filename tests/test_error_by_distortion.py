"""Binning a run's test errors by the size of each test image's distortion."""

import math

import pytest
import torch

from stn_analysis.diagnostics.error_by_distortion import error_at_other_std, error_by_size
from stn_repro.data import synthetic_mnist
from stn_repro.data.distortions import DISTORTION_SIZE, distort, distortion_size, ink_in_frame
from stn_repro.training.learners import evaluate, wrong_answers
from stn_repro.transformers import get_transform, pixel_centres, similarity_to_affine


def test_distortion_size_is_the_absolute_angle_or_the_rms_offset():
    angles = torch.tensor([-80.0, 10.0])
    assert torch.equal(distortion_size("r", {"angle_deg": angles}), torch.tensor([80.0, 10.0]))
    corners = torch.zeros(2, 4, 2)
    corners[0] = 3.0  # every offset 3 px: rms 3
    corners[1, 0, 0] = 8.0  # one offset of 8 among eight: rms sqrt(64 / 8)
    assert torch.allclose(distortion_size("p", {"corner_offsets_px": corners}), torch.tensor([3.0, 8.0**0.5]))
    with pytest.raises(ValueError, match="tc only translates"):
        distortion_size("tc", {})


def test_distortion_size_reads_what_the_generator_returns():
    digits = synthetic_mnist(num_train=8, num_test=8, seed=0).test_images[:8].float().unsqueeze(1) / 255
    for name in DISTORTION_SIZE:
        _, params = distort(name, digits, torch.Generator().manual_seed(1))
        size = distortion_size(name, params)
        assert size.shape == (8,) and (size >= 0).all()
    _, params = distort("e", digits, torch.Generator().manual_seed(1))
    expected = params["control_offsets_px"][3].pow(2).mean().sqrt()
    assert torch.isclose(distortion_size("e", params)[3], expected)


def test_error_by_size_counts_each_bin_and_leaves_the_last_open():
    size = torch.tensor([0.5, 1.5, 1.7, 2.0, 9.0, 30.0])
    wrong = torch.tensor([False, True, False, True, True, False])
    rows = error_by_size(wrong, size, [0, 1, 2, 5])
    assert [r["images"] for r in rows] == [1, 2, 1, 2]
    assert [r["error"] for r in rows] == [0.0, 50.0, 100.0, 50.0]
    assert [round(r["share_of_errors"], 3) for r in rows] == [0.0, 33.333, 33.333, 33.333]
    assert rows[-1]["high"] is None and rows[0]["high"] == 1
    assert sum(r["share"] for r in rows) == pytest.approx(100.0)
    assert error_by_size(wrong, size, [0, 100, 200])[1]["error"] is None  # an empty bin has no error
    with pytest.raises(ValueError, match="increasing"):
        error_by_size(wrong, size, [0, 2, 1])
    with pytest.raises(ValueError, match="same"):
        error_by_size(wrong[:3], size, [0, 1])


def test_wrong_answers_are_the_ones_evaluate_counts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (50,))
    wrong = wrong_answers(model, images, labels, batch_size=7)
    assert wrong.dtype == torch.bool and wrong.shape == (50,)
    assert 0 < wrong.sum() < 50
    assert evaluate(model, images, labels, batch_size=7) == pytest.approx(100.0 * wrong.float().mean().item())
    predictions = model(images.float() / 255).argmax(1)
    assert torch.equal(wrong, predictions != labels)


def test_ink_in_frame_matches_hand_counted_pixels():
    """Every pixel inked (so the kept share is the share of pixel centres the frame's warp reaches)."""
    full = torch.ones(1, 1, 28, 28)
    identity = {"affine": get_transform("affine").identity().unsqueeze(0)}
    assert ink_in_frame("r", identity, full).tolist() == [1.0]
    # Source = target shifted right by half the frame: the frame reaches the source's right half, 14 columns.
    shifted = {"affine": torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])}
    assert ink_in_frame("rts", shifted, full).tolist() == [0.5]
    # A homography that halves: the frame reaches [-0.5, 0.5]^2 of the source, 14 x 14 of its 28 x 28 pixels.
    halved = {"projective": torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])}
    assert ink_in_frame("p", halved, full).tolist() == [0.25]
    # Turned by 45 degrees: the frame reaches the diamond |x| + |y| <= sqrt(2) of the source.
    turned = {
        "affine": similarity_to_affine(torch.tensor([0.7853981633974483]), torch.ones(1), torch.zeros(1, 2))
    }
    c = pixel_centres(28, dtype=torch.float64)
    diamond = (c.abs().view(1, -1) + c.abs().view(-1, 1) <= 2**0.5).sum().item() / 784
    assert ink_in_frame("r", turned, full).item() == pytest.approx(diamond, abs=1e-6)


def test_ink_in_frame_weighs_by_ink_and_refuses_local_warps():
    digits = torch.zeros(2, 1, 28, 28)
    digits[0, 0, 10, 3] = 1.0  # one inked pixel in the left half, one in the right half at a third the ink
    digits[0, 0, 10, 20] = 1.0 / 3
    shifted = {
        "affine": torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]] * 2)
    }  # the frame reaches the right half
    kept = ink_in_frame("r", shifted, digits)
    assert kept[0].item() == pytest.approx(0.25) and kept[1].item() == 1.0  # an empty digit loses nothing
    with pytest.raises(ValueError, match="no single frame warp"):
        ink_in_frame("e", {}, digits)
    with pytest.raises(ValueError, match="3 parameter rows for 2 digits"):
        ink_in_frame("r", {"affine": shifted["affine"].repeat(2, 1)[:3]}, digits)


def test_ink_in_frame_of_generated_p_images_is_a_share():
    digits = synthetic_mnist(num_train=8, num_test=64, seed=0).test_images.float().unsqueeze(1) / 255
    _, params = distort("p", digits, torch.Generator().manual_seed(4))
    kept = ink_in_frame("p", params, digits)
    assert kept.shape == (64,) and ((kept >= 0) & (kept <= 1)).all()
    _, params = distort("r", digits, torch.Generator().manual_seed(4))
    assert ink_in_frame("r", params, digits).min() > 0.9  # a turned digit keeps its ink near the centre


def test_error_at_other_std_weighs_each_image_by_the_ratio_of_its_offsets_densities():
    offsets = torch.zeros(2, 1, 2)
    offsets[1, 0, 0] = 2.0  # image 1: one offset of 2 px (S = 4); image 0: none (S = 0)
    wrong = torch.tensor([True, False])
    assert error_at_other_std(wrong, offsets, 2.0, 2.0) == pytest.approx((50.0, 2.0))  # same std: plain error
    # Drawn with std 2, re-weighed to std 1: image 1 counts exp(4 / 8 - 4 / 2) = exp(-1.5) as much as image 0.
    w = math.exp(-1.5)
    error, effective = error_at_other_std(wrong, offsets, 2.0, 1.0)
    assert error == pytest.approx(100.0 / (1 + w)) and effective == pytest.approx((1 + w) ** 2 / (1 + w**2))
    with pytest.raises(ValueError, match="positive"):
        error_at_other_std(wrong, offsets, 2.0, 0.0)
    with pytest.raises(ValueError, match="share"):
        error_at_other_std(wrong[:1], offsets, 2.0, 1.0)


def test_error_at_other_std_recovers_a_known_error_rate_under_the_other_draw():
    """A "model" wrong exactly when the 8 offsets' sum of squares exceeds 200: its error under N(0, s) is the
    chi-square tail P(chi2_8 > 200 / s^2), known in closed form for every s."""
    from scipy.stats import chi2

    offsets = torch.randn(200_000, 4, 2, generator=torch.Generator().manual_seed(0)) * 5.0
    wrong = offsets.pow(2).sum(dim=(1, 2)) > 200.0
    for std in (5.0, 4.0, 3.5):
        error, effective = error_at_other_std(wrong, offsets, 5.0, std)
        assert error == pytest.approx(100.0 * chi2.sf(200.0 / std**2, df=8), rel=0.05), std
        assert 0 < effective <= 200_000
