"""Distorted-MNIST generators: shapes, quantisation, determinism, parameter distributions, inverse warps."""

import pytest
import torch

from stn_repro.data import (
    IMAGE_SIZE,
    SET_NAMES,
    addition_pairs,
    colocalisation,
    distort,
    synthetic_mnist,
)


@pytest.fixture(scope="module")
def mnist():
    return synthetic_mnist(num_train=256, num_test=64, seed=0)


def as_digits(images_uint8):
    return images_uint8.unsqueeze(1).float() / 255


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_each_set_has_its_size_dtype_and_8_bit_levels(mnist, set_name):
    digits = as_digits(mnist.train_images[:16])
    images, params = distort(set_name, digits, torch.Generator().manual_seed(0), mnist.train_images)
    size = IMAGE_SIZE[set_name]
    assert images.shape == (16, 1, size, size) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, (images * 255).round() / 255, rtol=0, atol=0)
    assert all(value.device.type == "cpu" and len(value) == 16 for value in params.values())


def test_addition_and_colocalisation_sizes(mnist):
    digits = as_digits(mnist.train_images[:8])
    pairs, params = addition_pairs(digits, digits.flip(0), torch.Generator().manual_seed(0))
    assert pairs.shape == (8, 2, 42, 42) and params["scale"].shape == (8, 2)
    images, boxes, _ = colocalisation(digits, torch.Generator().manual_seed(0), mnist.train_images)
    assert images.shape == (8, 1, 84, 84) and boxes.shape == (8, 4)
