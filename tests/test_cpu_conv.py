"""CpuConv2d: nn.Conv2d's numbers, with the CPU's faster gradient formulations (one-channel input gradient,
small-output weight gradient)."""

import pytest
import torch
from torch import nn

from stn_repro.models.cpu_conv import (
    SMALL_OUTPUT,
    CpuConv2d,
    _CpuConv2d,
    bias_grad,
    input_grad_one_channel,
    weight_grad_as_forward_conv,
    weight_grad_one_channel,
)


@pytest.mark.parametrize(
    "in_channels,size,kernel,padding",
    [(1, 9, 5, 0), (1, 8, 5, 2), (3, 6, 3, 0), (3, 5, 3, 1)],  # one channel; 4x4 and 5x5 outputs
)
def test_the_convolution_passes_gradcheck_in_float64(in_channels, size, kernel, padding):
    torch.manual_seed(0)
    x = torch.randn(2, in_channels, size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, in_channels, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    pad = (padding, padding)
    assert torch.autograd.gradcheck(lambda x, w, b: _CpuConv2d.apply(x, w, b, pad, True), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w: _CpuConv2d.apply(x, w, None, pad, True), (x, weight))


def test_the_weight_gradient_as_a_forward_convolution_matches_a_hand_computed_one():
    # One image, one channel each way: dW[i, j] = sum_(y, x) input[y + i, x + j] * grad[y, x].
    image = torch.arange(16.0).view(1, 1, 4, 4)
    grad = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    expected = image[0, 0, :3, :3] + 2 * image[0, 0, 1:, 1:]
    assert torch.equal(weight_grad_as_forward_conv(image, grad, (0, 0))[0, 0], expected)


def test_the_one_channel_weight_gradient_matches_a_hand_computed_one():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    grad = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]], [[[0.0, 0.0], [0.0, 0.0]]]]).transpose(
        0, 1
    )  # [1, 2, 2, 2]
    expected = image[0, 0, :3, :3] + 2 * image[0, 0, 1:, 1:]
    got = weight_grad_one_channel(image, grad, (3, 3), (0, 0))
    assert got.shape == (2, 1, 3, 3)
    assert torch.equal(got[0, 0], expected) and torch.equal(got[1, 0], torch.zeros(3, 3))


def test_the_bias_gradient_is_the_sum_over_batch_and_positions():
    grad = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    for layout in (torch.contiguous_format, torch.channels_last):
        assert torch.equal(bias_grad(grad.contiguous(memory_format=layout)), grad.sum((0, 2, 3)))


def test_the_one_channel_input_gradient_matches_a_hand_computed_one():
    # A 2x2 kernel on a 3x3 image: each output's gradient lands on the four pixels under the kernel.
    weight = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    grad = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    expected = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(input_grad_one_channel(weight, grad, (3, 3), (0, 0))[0, 0], expected)


def run_both(fast: CpuConv2d, x: torch.Tensor, layout=torch.contiguous_format, autocast=False, force=False):
    """``fast`` and an ``nn.Conv2d`` on the same parameters, forward and backward: outputs and gradients.
    ``force``: every gradient formulation of the Function, whatever the dtype (the module takes the weight
    gradient's only in bfloat16)."""
    plain = nn.Conv2d(fast.in_channels, fast.out_channels, fast.kernel_size, padding=fast.padding)
    plain.load_state_dict(fast.state_dict())  # the same parameters under the same names
    results = []
    for conv in (fast, plain):
        conv.to(memory_format=layout)
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if force and conv is fast:
                out = _CpuConv2d.apply(xi, conv.weight, conv.bias, conv.padding, True)
            else:
                out = conv(xi)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach().float(), xi.grad, conv.weight.grad, conv.bias.grad))
    return results


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    "in_channels,size,padding", [(1, 21, 4), (1, 28, 0), (6, 10, 0), (6, 11, 0), (6, 12, 0), (6, 10, 3)]
)
@pytest.mark.parametrize("force", [False, True])
def test_it_computes_what_nn_conv2d_computes_in_float32(in_channels, size, padding, layout, force):
    """Each path (one channel; 7x7 with a 4x4 or 5x5 output; a 6x6 output, padded 10x10) gives nn.Conv2d's
    output and gradients up to rounding, as the module runs float32 and with every formulation forced."""
    torch.manual_seed(0)
    fast = CpuConv2d(in_channels, 5, 7, padding=padding)
    x = torch.rand(4, in_channels, size, size)
    for a, b in zip(*run_both(fast, x, layout, force=force), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        # Float32 sums of a few thousand terms in another order: within 1e-5 of the largest entry.
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    with torch.no_grad():  # no gradient wanted: plain nn.Conv2d
        assert torch.equal(
            fast(torch.ones(1, in_channels, size, size)),
            fast._conv_forward(torch.ones(1, in_channels, size, size), fast.weight, fast.bias),
        )


@pytest.mark.parametrize("in_channels,size", [(1, 28), (8, 10), (8, 11)])
def test_under_bf16_autocast_it_runs_in_bf16_and_agrees_with_nn_conv2d(in_channels, size):
    torch.manual_seed(0)
    fast = CpuConv2d(in_channels, 8, 7)
    (out, gx, gw, gb), (out_ref, gx_ref, gw_ref, gb_ref) = run_both(
        fast, torch.rand(16, in_channels, size, size), torch.channels_last, autocast=True
    )
    assert gw.dtype == gb.dtype == gx.dtype == torch.float32  # back in the parameters' and input's dtype
    for a, b in ((out, out_ref), (gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
        # bf16 keeps 8 bits: a difference of a few units in the last place of the largest entry.
        assert (a - b).abs().max() <= 2e-2 * b.abs().max()


def test_each_convolution_takes_the_weight_gradient_measured_fastest_for_its_shape():
    seen = []
    original = _CpuConv2d.setup_context

    def spy(ctx, inputs, output):
        original(ctx, inputs, output)
        seen.append((inputs[0].shape[1], output.shape[-1], inputs[0].dtype, ctx.weight_grad))

    def step(conv: CpuConv2d, size: int, autocast: bool = True) -> None:
        x = torch.rand(1, conv.in_channels, size, size, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = conv(x)
        out.float().sum().backward()

    bf16, f32 = torch.bfloat16, torch.float32
    _CpuConv2d.setup_context = staticmethod(spy)
    try:
        step(CpuConv2d(1, 3, 3), 30)
        for size in (6, 7, 8):  # outputs 4x4, 5x5, 6x6
            step(CpuConv2d(2, 3, 3), size)
        step(CpuConv2d(2, 3, 3), 6, autocast=False)  # float32: oneDNN (not faster there)
        switched_off = CpuConv2d(2, 3, 3)
        switched_off.fast_weight_grad = False
        step(switched_off, 7)
    finally:
        _CpuConv2d.setup_context = staticmethod(original)
    assert SMALL_OUTPUT == 25
    assert seen == [
        (1, 28, bf16, "im2col"),
        (2, 4, bf16, "forward conv"),
        (2, 5, bf16, "forward conv"),
        (2, 6, bf16, "onednn"),
        (2, 4, f32, "onednn"),
        (2, 5, bf16, "onednn"),
    ]


def test_the_conv_paths_bench_times_every_shape_and_checks_the_pool_is_the_same(capsys):
    from benchmarks.bench_conv_paths import main

    main("--synthetic --cells r/st_cnn:affine --batch-size 4 --calls 1".split())
    out = capsys.readouterr().out
    convs = [line for line in out.splitlines() if line.startswith("conv ")]
    assert [c.split(" on ")[0] for c in convs] == [
        "conv 5x5 1->20",
        "conv 5x5 20->20",
        "conv 9x9 1->88",
        "conv 7x7 88->88",
    ]
    assert all(" - " in c for c in convs if "20->20" in c or "88->88" in c)  # im2col dW: one channel only
    pools = [line for line in out.splitlines() if line.startswith("[4, ")]
    assert len(pools) == 3 and all(line.endswith("True") for line in pools)


@pytest.mark.parametrize("model", ["cnn", "st_cnn:affine"])
def test_the_stacked_seeds_engine_trains_it_under_bf16_autocast(model):
    """vmap over the seeds runs the bfloat16 gradient formulations (one channel in, a 4x4 output)."""
    from benchmarks.bench_mnist import make_learner
    from stn_repro.data import synthetic_mnist
    from stn_repro.training.settings import SpeedSettings

    digits, cpu = synthetic_mnist(seed=0), torch.device("cpu")
    learner = make_learner(digits, "r", model, 8, 2, cpu, SpeedSettings(autocast="bf16"))
    before = {name: p.detach().clone() for name, p in learner.stacked.params.items()}
    losses = [learner.step() for _ in range(2)]
    assert all(torch.isfinite(loss).all() for loss in losses)
    convs = [
        name
        for name in before
        if "classifier" in name and name.endswith("weight") and before[name].dim() == 5
    ]
    assert len(convs) == 2  # both CpuConv2d of the classifier, stacked over the two seeds
    assert all(not torch.equal(before[name], learner.stacked.params[name]) for name in convs)
