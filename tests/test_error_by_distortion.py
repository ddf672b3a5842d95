"""Binning a run's test errors by the size of each test image's distortion."""

import pytest
import torch

from stn_repro.data import synthetic_mnist
from stn_repro.data.distortions import DISTORTION_SIZE, distort, distortion_size
from stn_repro.error_by_distortion import error_by_size
from stn_repro.training.loop import evaluate, wrong_answers


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
