"""Stored sets and training streams: HDF5 round trips, checksums, determinism, resumable streams."""

import pytest
import torch

from stn_repro.data import SET_NAMES, DistortedStream, synthetic_mnist


@pytest.fixture(scope="module")
def mnist():
    return synthetic_mnist(num_train=300, num_test=64, seed=0)


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_stream_resumes_exactly_where_it_left_off(mnist, set_name):
    def make():
        return DistortedStream(
            set_name, mnist.train_images, mnist.train_labels, 64, seed=3, clutter_source=mnist.train_images
        )

    stream = make()
    for _ in range(6):  # crosses an epoch boundary (300 digits)
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(6)]
    resumed = make()
    resumed.load_state_dict(state)
    for (x, y), (x_resumed, y_resumed) in zip(
        expected, [resumed.next_batch() for _ in range(6)], strict=True
    ):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)
