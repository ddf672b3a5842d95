"""The Table 1 models: layouts, parameter budgets, identity at initialisation."""

import copy

import pytest
import torch
from torch import nn

from stn_repro.models.cpu_conv import CpuConv2d
from stn_repro.models.mnist import (
    CNN,
    FCN,
    build_mnist_model,
    parameter_table,
    width_range_budget,
    width_range_params,
)

IMAGE_SIZES = {"r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}


def test_every_model_of_an_experiment_meets_the_budget_within_2_percent():
    rows = parameter_table(IMAGE_SIZES, param_budget=400_000)
    assert len(rows) == 5 * 8
    for row in rows:
        assert abs(row["param_count"] / 400_000 - 1) < 0.02, row


def test_budget_is_a_knob():
    for budget in (100_000, 250_000):
        for row in parameter_table({"rts": 42}, param_budget=budget):
            assert abs(row["param_count"] / budget - 1) < 0.02, row


@pytest.mark.parametrize(
    "kind,transform", [("fcn", None), ("cnn", None), ("st_fcn", "tps"), ("st_cnn", "affine")]
)
@pytest.mark.parametrize("data", ["r", "rts", "tc"])
def test_classifiers_have_three_weight_layers_and_produce_logits(kind, transform, data):
    size = IMAGE_SIZES[data]
    model, info = build_mnist_model(
        kind, (1, size, size), transform=transform, pool_after_transformer=data != "r"
    )
    weight_layers = [m for m in model.classifier.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(weight_layers) == 3
    assert model(torch.rand(2, 1, size, size)).shape == (2, 10)
    assert info.param_count == sum(p.numel() for p in model.parameters())


def test_spatial_models_start_as_the_plain_classifier_on_the_input():
    model, _ = build_mnist_model("st_cnn", (1, 42, 42), transform="projective", pool_after_transformer=True)
    x = torch.rand(3, 1, 42, 42)
    expected = model.classifier(nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-4)


def test_rts_st_cnn_uses_same_padding_because_21_pixels_are_too_few_for_valid_convolutions():
    model, _ = build_mnist_model("st_cnn", (1, 42, 42), transform="affine", pool_after_transformer=True)
    assert model.classifier[0].padding == (4, 4)
    plain, _ = build_mnist_model("cnn", (1, 42, 42))
    assert plain.classifier[0].padding == (0, 0)
    with pytest.raises(ValueError, match=r"too small.*padding='same'"):
        CNN((1, 21, 21), (32, 32), padding="valid")


def test_bad_model_requests_say_what_to_do():
    with pytest.raises(ValueError, match="unknown model 'resnet'; known: fcn, cnn, st_fcn, st_cnn"):
        build_mnist_model("resnet", (1, 28, 28))
    with pytest.raises(ValueError, match="use transformer=none"):
        build_mnist_model("cnn", (1, 28, 28), transform="affine")
    with pytest.raises(ValueError, match="needs a transformer"):
        build_mnist_model("st_fcn", (1, 28, 28))
    with pytest.raises(ValueError, match="two hidden layers"):
        FCN((1, 28, 28), (10,))


@pytest.mark.parametrize("kind,transform", [("cnn", None), ("st_cnn", "affine")])
def test_pooling_before_the_relu_trains_exactly_as_the_papers_relu_then_pool(kind, transform):
    # The models max-pool before each ReLU (less memory traffic); a ReLU commutes with a max, so values and
    # gradients must equal, bit for bit, those of the same weights in the usual conv -> ReLU -> pool order.
    torch.manual_seed(0)
    model, _ = build_mnist_model(kind, (1, 28, 28), transform=transform, param_budget=50_000)
    usual = copy.deepcopy(model)
    swapped = 0
    for sequence in [m for m in usual.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequence)
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                layers[i], layers[i + 1] = nn.ReLU(), layers[i]
                swapped += 1
        for i, layer in enumerate(layers):
            sequence[i] = layer
    assert swapped == (2 if kind == "cnn" else 3)  # the classifier's two, the localisation net's one
    x = torch.randn(16, 1, 28, 28)
    outputs = []
    for net in (model, usual):
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        outputs.append((out, [p.grad for p in net.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = outputs
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("data", "size", "pool", "budget", "outside"),
    [
        ("r", 28, False, 208_586, ()),
        ("rts", 42, True, 222_026, ("fcn",)),
        ("tc", 60, True, 251_672, ("fcn",)),
    ],
)
def test_the_width_range_budget_puts_the_most_models_in_the_papers_ranges(data, size, pool, budget, outside):
    chosen = width_range_budget(size, pool)
    assert chosen.params == budget and chosen.out_of_range == outside
    assert len(chosen.in_range) + len(outside) == 8
    for name in chosen.in_range:
        kind, _, transform = name.partition("-")
        _, info = build_mnist_model(
            kind,
            (1, size, size),
            transform=transform or None,
            pool_after_transformer=pool,
            param_budget=budget,
        )
        assert info.in_paper_width_range, name
    # The largest such budget: the top of the range of the model that binds first.
    intervals = [
        width_range_params(
            n.partition("-")[0],
            (1, size, size),
            transform=n.partition("-")[2] or None,
            pool_after_transformer=pool,
        )
        for n in chosen.in_range
    ]
    assert all(lo <= budget <= hi for lo, hi in intervals) and budget == min(hi for _, hi in intervals)


def test_width_range_params_are_the_counts_at_the_ends_of_the_range():
    low, high = width_range_params("fcn", (1, 28, 28))
    assert (low, high) == (784 * 128 + 128 + 128 * 128 + 128 + 1290, 784 * 256 + 256 + 256 * 256 + 256 + 2570)


def plain_convs(model: nn.Module) -> nn.Module:
    """``model`` with every ``CpuConv2d`` replaced, in place, by ``nn.Conv2d`` on the same parameters."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CpuConv2d):
                plain = nn.Conv2d(
                    child.in_channels, child.out_channels, child.kernel_size, padding=child.padding
                )
                plain.weight, plain.bias = child.weight, child.bias
                setattr(module, name, plain)
    return model


@pytest.mark.parametrize("data,size", [("r", 28), ("rts", 42)])
@pytest.mark.parametrize("autocast", [False, True])
def test_an_st_cnn_trains_as_with_nn_conv2d(data, size, autocast):
    """The CPU gradients change rounding only: ten SGD steps give the same losses and weights. In float32
    the one-channel input gradient is a matrix product; in bfloat16 the weight gradients are (R's 7x7
    convolution has a 4x4 output: a forward convolution; RTS's is larger: oneDNN's)."""
    torch.manual_seed(0)
    fast, _ = build_mnist_model(
        "st_cnn",
        (1, size, size),
        transform="affine",
        pool_after_transformer=data == "rts",
        param_budget=30_000,
    )
    plain = plain_convs(copy.deepcopy(fast))
    assert sum(type(m) is nn.Conv2d for m in plain.classifier.modules()) == 2
    batches = [(torch.rand(16, 1, size, size), torch.randint(0, 10, (16,))) for _ in range(10)]
    losses = []
    for model in (fast, plain):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        run = []
        for x, y in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-2 if autocast else 1e-4)
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        # Relative to each tensor's size. The localisation net's last layer starts at zero: its entries are
        # rounding-sized, and after 10 steps they differ by ~2% of its norm, as much as between nn.Conv2d
        # runs on 1 and on 2 threads (measured); every other tensor within 0.2%.
        assert (a - b).norm() <= 5e-2 * a.norm()
