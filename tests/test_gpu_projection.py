"""The GPU projection's counts: flops, bytes and floors of known operators, and the script end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.bench_mnist import OpCounter, learner_as_on_cuda
from benchmarks.gpu_projection import GPUS, GpuSpec, _KernelCost, bytes_moved, main
from stn_repro.data import synthetic_mnist

META = torch.device("meta")


def training_cost(module: nn.Module, x: torch.Tensor, gpu: GpuSpec = GPUS["h100"]) -> _KernelCost:
    with _KernelCost(gpu) as counter:
        module(x).sum().backward()
    return counter


def test_a_linear_layer_counts_the_textbook_training_flops():
    batch, inputs, outputs = 8, 32, 16
    layer = nn.Linear(inputs, outputs, bias=False, device=META)
    # Forward x @ W^T and the weight gradient: 2 x (2 B I O); no input gradient for a leaf without grad.
    assert training_cost(layer, torch.randn(batch, inputs, device=META)).flops == 4 * batch * inputs * outputs
    # With an input that needs its gradient, one more product of the same size.
    x = torch.randn(batch, inputs, device=META, requires_grad=True)
    assert training_cost(layer, x).flops == 6 * batch * inputs * outputs


def test_a_convolution_counts_its_multiply_adds_twice_per_pass():
    conv = nn.Conv2d(3, 4, kernel_size=3, bias=False, device=META)
    x = torch.randn(2, 3, 8, 8, device=META)  # output 2 x 4 x 6 x 6
    forward = 2 * (2 * 4 * 6 * 6) * (3 * 3 * 3)
    assert training_cost(conv, x).flops == 2 * forward  # forward + weight gradient


def test_a_gather_moves_the_selected_rows_not_the_whole_table():
    table = torch.empty(60_000, 784, device=META)
    index = torch.zeros(256, dtype=torch.long, device=META)
    rows = table[index]
    moved = bytes_moved(torch.ops.aten.index.Tensor, [table, index], rows)
    assert moved == 2 * 256 * 784 * 4 + 256 * 8  # read and write the 256 rows, read the indices
    copied = bytes_moved(torch.ops.aten.copy_.default, [rows, rows.clone()], rows)
    assert copied == 2 * 256 * 784 * 4  # copy_ reads its source only


def test_the_floor_is_the_binding_term_of_each_kernel():
    slow_launch = GpuSpec("test", fp32_tflops=1e9, tf32_tflops=1e9, bandwidth_tbs=1e9, kernel_us=1e3)
    counter = training_cost(nn.Linear(4, 4, device=META), torch.randn(2, 4, device=META), slow_launch)
    assert counter.kernels > 0
    assert counter.bound_s == {
        "launch": pytest.approx(counter.kernels * 1e-3),
        "memory": 0.0,
        "arithmetic": 0.0,
    }
    slow_memory = GpuSpec("test", fp32_tflops=1e9, tf32_tflops=1e9, bandwidth_tbs=1e-12, kernel_us=0)
    counter = training_cost(nn.Linear(4, 4, device=META), torch.randn(2, 4, device=META), slow_memory)
    assert counter.bound_s["memory"] == pytest.approx(counter.bytes)  # one byte per second
    assert counter.bound_s["launch"] == counter.bound_s["arithmetic"] == 0.0


def test_allocations_launch_no_kernel():
    with _KernelCost(GPUS["h100"]) as counter:
        torch.empty(1000, device=META)
    assert counter.count.device == 1 and counter.kernels == 0 and counter.bytes == 0


def test_the_counted_step_updates_with_sgds_foreach_kernels_as_cuda_does():
    # On CUDA, SGD defaults to its foreach implementation (a few kernels for all parameters); the per-tensor
    # loop it takes on other devices would overcount the GPU's kernels.
    names = []

    class Names(OpCounter):
        def device_operator(self, func, args, kwargs, inputs, out):
            names.append(func.__name__)

    learner = learner_as_on_cuda(synthetic_mnist(num_train=64, num_test=4), "r", "fcn", 8, 1)
    with Names():
        learner.step()
    assert any(name.startswith("_foreach_") for name in names)
    assert "add_.Tensor" not in names and "mul_.Tensor" not in names


def test_the_projection_runs_end_to_end(capsys):
    main(
        [
            "--synthetic",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--stack",
            "2",
            "--cells",
            "r/fcn,tc/st_cnn:affine",
        ]
    )
    out = capsys.readouterr().out
    assert "not measured on a GPU" in out and "host cost per operator, measured here" in out
    assert "r/fcn" in out and "tc/st_cnn:affine" in out and "scaled x18.00 from 2 cells" in out
    for row in (
        "eager, one seed at a time",
        "8 jobs at once",
        "16 jobs at once",
        "2 seeds stacked",
        "GPU floor",
    ):
        assert row in out
    assert "the one-seed GPU floor is bound by launch" in out


@pytest.mark.parametrize("arguments", [["--jobs", "0"], ["--jobs", "8,x"], ["--stack", "0"]])
def test_bad_arguments_are_refused(arguments, capsys):
    with pytest.raises(SystemExit):
        main(arguments)
    assert "--jobs" in capsys.readouterr().err


@pytest.mark.parametrize("cells", ["r/nonsense", "r", "x/cnn"])
def test_an_unknown_cell_is_refused_with_the_list(cells, capsys):
    with pytest.raises(SystemExit):
        main(["--cells", cells])
    err = capsys.readouterr().err
    assert "unknown cell" in err and "rts/st_cnn:tps" in err
