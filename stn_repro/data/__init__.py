"""The suite's data sets: fetched with checksums, stored once, verified when read, streamed with exact resume.

- MNIST and its distortions (spec Sects. 2-4): :mod:`.mnist` (fetch, load), :mod:`.distortions` (R, RTS, P,
  E, TC, addition pairs, co-localisation images: the same geometry the transformers learn), :mod:`.sets`
  (the stored test and validation sets), :mod:`.streams` (training batches), :mod:`.addition`, :mod:`.plain`,
  :mod:`.sheets` (sample pictures).
- SVHN (Sect. 5): :mod:`.svhn`. CUB-200-2011 (Sect. 6): :mod:`.cub`. Their synthetic stand-ins, in the real
  formats: :mod:`.synthetic`.
- Shared: :mod:`.files` (where data live, :class:`DataError`, checked downloads).

The names below are distorted MNIST's, gathered for convenience. See :mod:`stn_repro.data.distortions` for
the **Convention** (devices, seeding, pixel coordinates) that the generators share with
:mod:`stn_repro.transformers`.
"""

from stn_repro.data.files import DataError, default_data_dir
from stn_repro.data.mnist import (
    MNIST_MD5,
    MNIST_MIRRORS,
    MnistArrays,
    fetch_mnist,
    load_mnist,
    synthetic_mnist,
)
from stn_repro.data.sets import (
    DEFAULT_SEED,
    EXTRA_SETS,
    EXTRA_SPLITS,
    GENERATOR_VERSION,
    SPLITS,
    build_all_sets,
    generate_addition_set,
    generate_colocalisation_set,
    generate_set,
    load_set,
    load_set_arrays,
    read_set,
    set_checksum,
    set_path,
    summarise_test_set,
    train_indices,
    validation_indices,
    write_set,
)
from stn_repro.data.streams import DistortedMNIST, DistortedStream, FixedTrainingSet
from stn_repro.seeding import derive_seed

from .distortions import (
    ADDITION_SIZE,
    COLOC_SIZE,
    DISTORTED_SET_NAMES,
    IMAGE_SIZE,
    NUM_ADDITION_CLASSES,
    SET_NAMES,
    VARIANT_SETS,
    addition_pairs,
    colocalisation,
    distort,
    quantise,
)

__all__ = [
    "ADDITION_SIZE",
    "COLOC_SIZE",
    "DEFAULT_SEED",
    "DISTORTED_SET_NAMES",
    "EXTRA_SETS",
    "EXTRA_SPLITS",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MNIST_MD5",
    "MNIST_MIRRORS",
    "NUM_ADDITION_CLASSES",
    "SET_NAMES",
    "SPLITS",
    "VARIANT_SETS",
    "DataError",
    "DistortedMNIST",
    "DistortedStream",
    "FixedTrainingSet",
    "MnistArrays",
    "addition_pairs",
    "build_all_sets",
    "colocalisation",
    "default_data_dir",
    "derive_seed",
    "distort",
    "fetch_mnist",
    "generate_addition_set",
    "generate_colocalisation_set",
    "generate_set",
    "load_mnist",
    "load_set",
    "load_set_arrays",
    "quantise",
    "read_set",
    "set_checksum",
    "set_path",
    "summarise_test_set",
    "synthetic_mnist",
    "train_indices",
    "validation_indices",
    "write_set",
]
