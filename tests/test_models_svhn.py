"""The SVHN multi-digit models: layouts, parameter counts, identity at initialisation, dropout placement,
localisation parameters and the composition of ST-CNN Multi's transformers."""

import itertools
import math

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from stn_repro.models.svhn import (
    SVHN_MODEL_KINDS,
    MultiDigitCNN,
    build_svhn_model,
    compose_affines,
    composed_affine,
    transformer_outputs,
)
from stn_repro.training.learners import localisation_parameters, make_optimizer
from stn_repro.training.settings import TrainSettings
from stn_repro.transformers import Affine, RegressionHead
from stn_repro.viz import transformation_figure

SMALL = 0.125  # width multiplier of the fast tests: conv 6-24 channels, fc 384 units, localisation 4 units
AFFINE = Affine()


def conv_params(c_in: int, c_out: int, kernel: int = 5) -> int:
    return kernel * kernel * c_in * c_out + c_out


def fc_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def hand_cnn_params(size: int, fc_layers: int) -> int:
    # conv[48]-max-conv[64]-conv[128]-max-conv[160]-conv[192]-max-conv[192]-conv[192]-max-conv[192]
    channels = [3, 48, 64, 128, 160, 192, 192, 192, 192]
    convs = sum(conv_params(a, b) for a, b in itertools.pairwise(channels))
    final = math.ceil(size / 16)  # four ceil-mode 2x2 pools: 54 -> 27 -> 14 -> 7 -> 4
    features = 192 * final * final
    fcs = sum(fc_params(n, 3072) for n in [features] + [3072] * (fc_layers - 1))
    return convs + fcs + fc_params(3072, 5 * 11)


def hand_single_localisation_params(size: int) -> int:
    # conv[32,5,1,2]-max[2]-conv[32,5,1,2]-fc[32]-fc[32]-regression[6]
    return (
        conv_params(3, 32)
        + conv_params(32, 32)
        + fc_params(32 * (size // 2) ** 2, 32)
        + fc_params(32, 32)
        + fc_params(32, 6)
    )


def hand_multi_localisation_params(size: int) -> int:
    # fc[32]-fc[32]-regression[6] on the maps conv 1-4 read: the image, conv 1 pooled, conv 2, conv 3 pooled
    half, quarter = math.ceil(size / 2), math.ceil(size / 4)
    maps = [3 * size * size, 48 * half * half, 64 * half * half, 128 * quarter * quarter]
    return sum(fc_params(n, 32) + fc_params(32, 32) + fc_params(32, 6) for n in maps)


def randomise_regressions(model: nn.Module, seed: int = 0) -> None:
    """Non-identity transformers that differ per image: random regression weights and biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [
            m for t in model.transformers for m in t.localisation.modules() if isinstance(m, nn.Linear)
        ]:
            if isinstance(layer, RegressionHead):
                layer.weight.copy_(0.05 * torch.randn(layer.weight.shape, generator=generator))
                layer.bias.copy_(AFFINE.identity() + 0.15 * torch.randn(6, generator=generator))
            else:
                layer.bias.add_(0.5)  # keeps the 4 hidden units of a narrow net alive, so maps vary per image


@pytest.mark.parametrize("size", [54, 128])
@pytest.mark.parametrize("kind", SVHN_MODEL_KINDS)
def test_every_model_gives_five_eleven_way_logits(kind, size):
    torch.manual_seed(0)
    model, info = build_svhn_model(kind, (3, size, size), width=SMALL if size == 54 else SMALL / 2)
    assert model(torch.rand(2, 3, size, size)).shape == (2, 5, 11)
    assert info.param_count == sum(p.numel() for p in model.parameters())
    assert info.in_shape == (3, size, size) and info.kind == kind


@pytest.mark.parametrize("size", [54, 128])
@pytest.mark.parametrize("fc_layers", [3, 2])
def test_full_width_parameter_counts_match_a_hand_count_of_the_layer_list(size, fc_layers):
    with torch.device("meta"):  # counts without allocating the 30-80M parameters
        models = {
            kind: build_svhn_model(kind, (3, size, size), fc_layers=fc_layers) for kind in SVHN_MODEL_KINDS
        }
    cnn = hand_cnn_params(size, fc_layers)
    expected = {
        "cnn": (cnn, 0),
        "st_cnn_single": (cnn + hand_single_localisation_params(size), hand_single_localisation_params(size)),
        "st_cnn_multi": (cnn + hand_multi_localisation_params(size), hand_multi_localisation_params(size)),
    }
    for kind, (_, info) in models.items():
        assert (info.param_count, info.localisation_params) == expected[kind], kind
    if (size, fc_layers) == (54, 3):  # the layout the suite reports by default
        assert cnn == 32_820_951


def test_eleven_hidden_layers_by_default():
    model = MultiDigitCNN((3, 54, 54), width=SMALL)
    hidden = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not model.heads]
    assert len(hidden) == 8 + 3
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        6,
        8,
        16,
        20,
        24,
        24,
        24,
        24,
    ]


@pytest.mark.parametrize("kind,size", [("st_cnn_single", 54), ("st_cnn_multi", 54), ("st_cnn_multi", 64)])
def test_transformers_start_at_the_identity_so_an_st_model_computes_its_cnn(kind, size):
    torch.manual_seed(1)
    cnn, _ = build_svhn_model("cnn", (3, size, size), width=SMALL)
    model, _ = build_svhn_model(kind, (3, size, size), width=SMALL)
    model.cnn.load_state_dict(cnn.state_dict())
    cnn.eval(), model.eval()
    images = torch.rand(3, 3, size, size)
    expected = cnn(images)
    torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 1e-3  # not trivially equal


def test_dropout_spares_the_first_conv_and_the_localisation_nets():
    model, _ = build_svhn_model("st_cnn_multi", (3, 54, 54), width=SMALL, dropout=0.5)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    # The inputs of conv 3-8, of the three fc layers and of the heads: every hidden output but conv 1's.
    assert len(dropouts) == 6 + 3 + 1 and all(d.p == 0.5 for d in dropouts)
    for transformer in model.transformers:
        assert not any(isinstance(m, nn.Dropout) for m in transformer.modules())
    for stage in model.cnn.stages[:2]:  # conv 1 reads the image, conv 2 reads conv 1's output
        assert not any(isinstance(m, nn.Dropout) for m in stage)
    # A transformer before stage k reads the map before that stage's dropout.
    assert all(isinstance(stage[0], nn.Dropout) for stage in model.cnn.stages[2:])

    images = torch.rand(2, 3, 54, 54)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))


def test_every_transformer_has_a_localisation_net_that_the_optimizer_gives_its_own_lr():
    for kind, count in [("st_cnn_single", 1), ("st_cnn_multi", 4)]:
        model, info = build_svhn_model(kind, (3, 54, 54), width=SMALL)
        assert len(model.transformers) == count
        found = {id(p) for p in localisation_parameters(model)}
        expected = {id(p) for t in model.transformers for p in t.localisation.parameters()}
        assert found == expected
        assert sum(p.numel() for p in localisation_parameters(model)) == info.localisation_params > 0
        groups = make_optimizer(model, TrainSettings(localisation_lr_multiplier=0.1)).param_groups
        assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
        assert {id(p) for p in groups[1]["params"]} == expected


def test_composition_of_known_affines_is_their_matrix_product():
    identity = AFFINE.identity().expand(2, -1)
    assert torch.equal(compose_affines(identity, identity, identity), identity)
    # Outer: rotate 90 degrees (x, y) -> (-y, x), then shift by (0.5, 0); inner: scale 0.5, shift (0, 0.2).
    outer = torch.tensor([[0.0, -1.0, 0.5, 1.0, 0.0, 0.0]])
    inner = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.5, 0.2]])
    # outer(inner(x, y)) = outer(0.5 x, 0.5 y + 0.2) = (-(0.5 y + 0.2) + 0.5, 0.5 x)
    expected = torch.tensor([[0.0, -0.5, 0.3, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(compose_affines(outer, inner), expected, rtol=0, atol=1e-7)


def test_multi_at_initialisation_composes_to_the_identity_up_to_the_pool_frame_of_odd_maps():
    even, _ = build_svhn_model("st_cnn_multi", (3, 64, 64), width=SMALL)  # maps 64, 32, 32, 16: all even
    even(torch.rand(2, 3, 64, 64))
    assert torch.equal(composed_affine(even), AFFINE.identity().expand(2, -1))

    odd, _ = build_svhn_model("st_cnn_multi", (3, 54, 54), width=SMALL)  # conv 3's 27 px map pools to 14
    odd(torch.rand(2, 3, 54, 54))
    # Window j of the 14 px map covers pixels [2j, 2j + 2) of 27: its frame spans [-1, 1 + 2/27].
    frame = torch.tensor([28 / 27, 0.0, 1 / 27, 0.0, 28 / 27, 1 / 27])
    torch.testing.assert_close(composed_affine(odd), frame.expand(2, -1), rtol=0, atol=1e-6)


def test_pool_frame_map_sends_each_pooled_pixel_to_the_centre_of_its_window():
    model, _ = build_svhn_model("st_cnn_multi", (3, 54, 54), width=SMALL)
    pooled_centres = (2 * torch.arange(14.0) + 1) / 14 - 1
    window_centres = 2 * (2 * torch.arange(14.0) + 1) / 27 - 1  # pixel edges 2j .. 2j + 2 of 27
    points = torch.stack([pooled_centres, pooled_centres.flip(0)], dim=-1)
    mapped = AFFINE.transform_points(torch.tensor([model.frame_maps[2]]), points)[0]
    torch.testing.assert_close(mapped, torch.stack([window_centres, window_centres.flip(0)], -1))


def test_multi_composed_map_equals_its_four_transformers_applied_one_by_one():
    torch.manual_seed(2)
    model, _ = build_svhn_model("st_cnn_multi", (3, 54, 54), width=SMALL)
    randomise_regressions(model)
    model.eval()
    model(torch.rand(3, 3, 54, 54))
    steps = [t.last_params for t in model.transformers]
    assert all(not torch.allclose(p, AFFINE.identity().expand(3, -1), atol=0.05) for p in steps)
    assert all(not torch.equal(p[0], p[1]) for p in steps)  # the maps differ per image
    # Points of transformer 4's output frame, through T4, the 27 -> 14 pool frame, T3, T2 and T1.
    points = torch.rand(3, 50, 2) * 2 - 1
    frame = torch.tensor([[28 / 27, 0.0, 1 / 27, 0.0, 28 / 27, 1 / 27]]).expand(3, -1)
    one_by_one = points
    for params in [steps[3], frame, steps[2], steps[1], steps[0]]:
        one_by_one = AFFINE.transform_points(params, one_by_one)
    composed = AFFINE.transform_points(composed_affine(model), points)
    torch.testing.assert_close(composed, one_by_one, rtol=0, atol=2e-6)


def test_single_transformer_output_is_what_the_picture_shows():
    torch.manual_seed(3)
    model, _ = build_svhn_model("st_cnn_single", (3, 54, 54), width=SMALL)
    randomise_regressions(model)
    model.eval()
    images = torch.rand(2, 3, 54, 54)
    outputs, params = transformer_outputs(model, images)
    transformer = model.transformers[0]
    localisation_input = images - 0.5
    assert torch.equal(outputs, transformer(images, localisation_input=localisation_input))
    assert torch.equal(params, transformer.last_params)


def test_multi_picture_of_table_2_builds():
    torch.manual_seed(4)
    model, _ = build_svhn_model("st_cnn_multi", (3, 54, 54), width=SMALL)
    randomise_regressions(model)
    model.train()
    images = torch.rand(3, 3, 54, 54)
    outputs, params = transformer_outputs(model, images)
    assert model.training  # restored
    assert outputs.shape == images.shape and params.shape == (3, 6)
    assert not torch.allclose(outputs, images, atol=0.05)
    fig = transformation_figure(images, outputs, params, AFFINE)
    assert len(fig.axes) == 6
    plt.close(fig)


def test_single_can_sample_a_smaller_output_for_its_cnn():
    model, _ = build_svhn_model("st_cnn_single", (3, 128, 128), width=SMALL / 2, transformer_output_size=64)
    assert model.cnn.in_shape == (3, 64, 64)
    assert model(torch.rand(1, 3, 128, 128)).shape == (1, 5, 11)


def test_bad_requests_say_what_is_wrong():
    with pytest.raises(
        ValueError, match="unknown SVHN model 'resnet'; known: cnn, st_cnn_single, st_cnn_multi"
    ):
        build_svhn_model("resnet")
    with pytest.raises(ValueError, match=r"a 8x8 input is too small .* the smallest input is 9x9"):
        build_svhn_model("st_cnn_multi", (3, 8, 8), width=SMALL)
    build_svhn_model("cnn", (3, 9, 9), width=SMALL)  # the smallest
    model, _ = build_svhn_model("cnn", (3, 54, 54), width=SMALL)
    with pytest.raises(ValueError, match=r"built for images \[B, 3, 54, 54\], got \(2, 3, 64, 64\)"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="st_cnn_single only"):
        build_svhn_model("st_cnn_multi", width=SMALL, transformer_output_size=32)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        build_svhn_model("cnn", width=SMALL, dropout=1.0)


def test_hidden_layers_start_he_initialised_so_the_logits_depend_on_the_image():
    torch.manual_seed(0)
    model, _ = build_svhn_model("cnn", (3, 54, 54), width=0.5, dropout=0.0)
    hidden = [
        m
        for m in (*model.stages.modules(), *model.fully_connected.modules())
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    assert len(hidden) == 8 + 3
    for layer in hidden:
        fan_in = layer.weight[0].numel()
        assert abs(layer.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.15 and not layer.bias.any()
    logits = model.eval()(torch.rand(16, 3, 54, 54))
    # Across images, every logit moves by a fair fraction of its own scale (PyTorch's default init: ~1%).
    assert (logits.std(0) / logits.abs().mean(0)).mean() > 0.05


def test_the_svhn_bench_times_every_model_and_size_in_one_process(tmp_path, capsys):
    from benchmarks.bench_svhn import main

    out = tmp_path / "bench.txt"
    quick = ["--rounds", "1", "--steps-per-round", "1", "--warmup", "0", "--batch-size", "2"]
    main([*quick, "--width", "0.125", "--size", "54", "128", "--models", "st_cnn_multi", "--out", str(out)])
    text = out.read_text()
    rows = [
        line.split()
        for line in text.splitlines()
        if line.startswith("  ") and "px " in line and "ms" not in line
    ]
    timed = [row for row in rows if len(row) >= 8 and row[2].replace(".", "").isdigit()]
    assert [(row[0], row[1]) for row in timed] == [
        ("cnn", "54px"),
        ("st_cnn_multi", "54px"),
        ("cnn", "128px"),
        ("st_cnn_multi", "128px"),
    ]
    assert all(row[5] == "1.000" for row in timed if row[0] == "cnn")  # each size against its own CNN
    assert "ST-CNN Multi / CNN at 54px" in text and "ST-CNN Multi / CNN at 128px" in text
