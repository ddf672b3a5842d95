"""Stored sets and training data: HDF5 round trips and errors, checksums, byte-identical files, splits,
and the streams (epoch permutations, fresh distortions, exact resume)."""

import os
import subprocess
import sys

import h5py
import pytest
import torch

from stn_analysis.records import scored_on
from stn_repro.data import (
    DISTORTED_SET_NAMES,
    EXTRA_SETS,
    EXTRA_SPLITS,
    GENERATOR_VERSION,
    SET_NAMES,
    DistortedMNIST,
    DistortedStream,
    FixedTrainingSet,
    build_all_sets,
    generate_addition_set,
    generate_colocalisation_set,
    generate_set,
    load_set,
    load_set_arrays,
    set_path,
    synthetic_mnist,
    train_indices,
    validation_indices,
    write_set,
)
from stn_repro.data.files import DataError
from stn_repro.data.sets import stored_set_checksum, summarise_test_set
from stn_repro.data.streams import SeededBatchStream


@pytest.fixture(scope="module")
def mnist():
    return synthetic_mnist(num_train=300, num_test=64, seed=0)


def write_tc(path, mnist, seed=5):
    data = generate_set("tc", mnist.test_images, mnist.test_labels, seed, mnist.train_images, batch_size=40)
    write_set(path, data, {"set_name": "tc", "split": "test", "seed": seed})
    return data


# --- generating and storing -------------------------------------------------------------------------------


@pytest.mark.parametrize("set_name", SET_NAMES)
def test_generate_set_is_deterministic_and_stores_every_param(mnist, set_name):
    def make(seed):
        return generate_set(set_name, mnist.test_images, mnist.test_labels, seed, mnist.train_images, 40)

    a, b, c = make(1), make(1), make(2)
    size = {"r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}[set_name]
    assert a["images"].shape == (64, 1, size, size) and a["images"].dtype == torch.uint8
    assert torch.equal(a["labels"], mnist.test_labels) and a["labels"].dtype == torch.int64
    assert all(torch.equal(a[key], b[key]) for key in a) and not torch.equal(a["images"], c["images"])
    assert all(len(value) == 64 for value in a.values())


def test_addition_and_colocalisation_sets(mnist):
    addition = generate_addition_set(mnist.test_images, mnist.test_labels, seed=0, batch_size=40)
    assert addition["images"].shape == (64, 2, 42, 42)
    assert torch.equal(addition["labels"], mnist.test_labels[addition["digit_indices"]].sum(1))
    assert addition["labels"].max() <= 18
    coloc = generate_colocalisation_set(mnist.test_images, mnist.test_labels, 0, mnist.train_images)
    assert coloc["images"].shape == (64, 1, 84, 84) and coloc["boxes"].shape == (64, 4)
    assert "clutter_xy_px" in coloc and coloc["clutter_xy_px"].shape == (64, 16, 2)


STORED_SET_CHECKSUMS = """
from stn_repro.data import generate_addition_set, generate_set, set_checksum, synthetic_mnist

mnist = synthetic_mnist(num_train=300, num_test=256, seed=0)
for name in ("r", "rts", "p", "e", "tc"):
    data = generate_set(name, mnist.test_images, mnist.test_labels, 7, mnist.train_images)
    print(name, set_checksum(data["images"], data["labels"]))
data = generate_addition_set(mnist.test_images, mnist.test_labels, 7)
print("addition", set_checksum(data["images"], data["labels"]))
"""


def test_stored_sets_are_the_same_bytes_whatever_kernels_the_cpu_runs():
    # Records are compared with today's test set by checksum, on whatever machine builds it. Forcing
    # torch's AVX2 kernels and MKL's SSE4.2 ones stands in for another CPU: with float32 warps the RTS, P
    # and addition sets of these 256 digits came out a few pixels apart that way. (Not torch's plain
    # kernels: their float32 randn differs, see stn_repro.data.sets.STORED_SET_DTYPE.)
    def checksums(**env):
        done = subprocess.run(
            [sys.executable, "-c", STORED_SET_CHECKSUMS],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(line.split() for line in done.stdout.splitlines())

    here = checksums()
    assert set(here) == {"r", "rts", "p", "e", "tc", "addition"}
    assert checksums(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="SSE4_2") == here


def test_write_set_round_trips_and_is_byte_identical(tmp_path, mnist):
    data = write_tc(tmp_path / "a.h5", mnist)
    write_tc(tmp_path / "b.h5", mnist)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    target = set_path("tc", "test", tmp_path)
    target.parent.mkdir(parents=True)
    (tmp_path / "a.h5").rename(target)
    images, labels = load_set("tc", "test", tmp_path)
    assert torch.equal(images, data["images"]) and torch.equal(labels, data["labels"])
    stored = load_set_arrays("tc", "test", tmp_path)
    assert all(torch.equal(stored[key], data[key]) for key in data)
    with h5py.File(target) as handle:
        assert handle.attrs["generator_version"] == GENERATOR_VERSION and handle.attrs["seed"] == 5


def test_missing_corrupt_modified_and_outdated_sets_name_the_file_and_the_fix(tmp_path, mnist):
    path = set_path("tc", "test", tmp_path)
    with pytest.raises(DataError, match=r"tc_test\.h5 is missing.*make data-mnist"):
        load_set("tc", "test", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match=r"tc_test\.h5 is unreadable.*make data-mnist"):
        load_set("tc", "test", tmp_path)
    write_tc(path, mnist)
    with h5py.File(path, "r+") as handle:
        handle["images"][0, 0, 0, 0] = 255 - handle["images"][0, 0, 0, 0]
    with pytest.raises(DataError, match=r"tc_test\.h5 fails its sha256 check.*make data-mnist"):
        load_set("tc", "test", tmp_path)
    write_tc(path, mnist)
    with h5py.File(path, "r+") as handle:
        handle.attrs["generator_version"] = GENERATOR_VERSION - 1
    with pytest.raises(
        DataError, match=rf"outdated: generator version {GENERATOR_VERSION - 1}.*make data-mnist"
    ):
        load_set("tc", "test", tmp_path)


def test_unknown_set_or_split_lists_the_known_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match="unknown stored set 'rotated'; known: r, rts, p, e, tc, p_4px, p_diagonal, p_digit_frame, addition",
    ):
        load_set("rotated", "test", tmp_path)
    with pytest.raises(ValueError, match="has no split 'train'; it has: test, val"):
        load_set("r", "train", tmp_path)
    with pytest.raises(ValueError, match="has no split 'val'; it has: test"):
        set_path("coloc", "val", tmp_path)
    assert set_path("addition", "val", tmp_path).name == "addition_val.h5"  # pairs of the validation digits
    with pytest.raises(ValueError, match="unknown distorted-MNIST set"):
        generate_set("q", torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(2), 0)


def test_build_all_sets_builds_every_file_then_skips_them(tmp_path, mnist):
    logs = []
    paths = build_all_sets(tmp_path, seed=1, log=logs.append, mnist=mnist)
    extra = sum(len(EXTRA_SPLITS[name]) for name in EXTRA_SETS)
    assert len(paths) == 2 * len(DISTORTED_SET_NAMES) + extra == 20 and all(p.is_file() for p in paths)
    assert sum("wrote" in line for line in logs) == len(paths)
    images, _ = load_set("r", "val", tmp_path)
    assert images.shape == (25, 1, 28, 28)  # a twelfth of 300 synthetic training digits held out
    assert load_set("coloc_tc", "test", tmp_path)[0].shape == (64, 1, 84, 84)
    before = {p: p.stat().st_mtime_ns for p in paths}
    logs.clear()
    build_all_sets(tmp_path, seed=1, log=logs.append, mnist=mnist)
    assert all("up to date" in line for line in logs) and {p: p.stat().st_mtime_ns for p in paths} == before
    logs.clear()
    build_all_sets(tmp_path, seed=2, log=logs.append, mnist=mnist)  # another seed rebuilds everything
    assert sum("wrote" in line for line in logs) == len(paths)


def test_validation_split_is_fixed_and_disjoint_from_training():
    val = validation_indices()
    assert len(val) == 5000 and len(val.unique()) == 5000 and torch.equal(val, validation_indices())
    assert torch.equal(val, val.sort().values) and val.max() < 60000
    train = train_indices(hold_out_validation=True)
    assert len(train) == 55000 and not torch.isin(train, val).any()
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60000))
    assert torch.equal(train_indices(hold_out_validation=False), torch.arange(60000))


# --- training data ------------------------------------------------------------------------------------------


def make_stream(cls, set_name, mnist, labels=None, batch_size=64, seed=3):
    labels = mnist.train_labels if labels is None else labels
    return cls(set_name, mnist.train_images, labels, batch_size, seed=seed, clutter_source=mnist.train_images)


@pytest.mark.parametrize("cls", [DistortedStream, FixedTrainingSet])
@pytest.mark.parametrize("set_name", SET_NAMES)
def test_stream_resumes_exactly_where_it_left_off(mnist, set_name, cls):
    stream = make_stream(cls, set_name, mnist)
    for _ in range(6):  # crosses an epoch boundary (300 digits)
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(6)]
    resumed = make_stream(cls, set_name, mnist)
    resumed.load_state_dict(state)
    for (x, y), (x_resumed, y_resumed) in zip(
        expected, [resumed.next_batch() for _ in range(6)], strict=True
    ):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)


@pytest.mark.parametrize("cls", [DistortedStream, FixedTrainingSet])
def test_every_epoch_is_a_permutation_and_batches_are_full(mnist, cls):
    # Labels set to the digit index show which digits a batch used.
    stream = make_stream(cls, "r", mnist, labels=torch.arange(300), batch_size=64)
    seen = torch.cat([stream.next_batch()[1] for _ in range(15)])  # 960 = 3 epochs and 60 digits
    x, _ = stream.next_batch()
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    for epoch in range(3):
        assert torch.equal(seen[300 * epoch : 300 * (epoch + 1)].sort().values, torch.arange(300))
    assert not torch.equal(seen[:300], seen[300:600])  # a new order each epoch
    assert stream.epoch == 3


def test_stream_draws_fresh_distortions_and_fixed_set_repeats_them(mnist):
    def first_image_of_digit_0(stream):
        images = {}
        for _ in range(2):  # two epochs of 300, batch 300
            x, y = stream.next_batch()
            images.setdefault("a", []).append(x[(y == 0).nonzero()[0, 0]])
        return images["a"]

    fresh = first_image_of_digit_0(make_stream(DistortedStream, "r", mnist, torch.arange(300), 300))
    fixed = first_image_of_digit_0(make_stream(FixedTrainingSet, "r", mnist, torch.arange(300), 300))
    assert not torch.equal(fresh[0], fresh[1]) and torch.equal(fixed[0], fixed[1])


def test_stream_errors(mnist):
    with pytest.raises(ValueError, match="'tc' needs clutter_source"):
        DistortedStream("tc", mnist.train_images, mnist.train_labels, 8, seed=0)
    with pytest.raises(ValueError, match="unknown distorted-MNIST set"):
        DistortedStream("z", mnist.train_images, mnist.train_labels, 8, seed=0)
    stream = make_stream(DistortedStream, "r", mnist)
    other = make_stream(DistortedStream, "r", mnist, seed=4)
    with pytest.raises(ValueError, match="state is for seed=4"):
        stream.load_state_dict(other.state_dict())


class TwoOrderStream(SeededBatchStream):
    """The smallest stream on the shared base: two orders, a generator, batches of item indices."""

    kind = "TwoOrderStream"

    def __init__(self, count, batch_size, seed):
        super().__init__(torch.arange(count), batch_size, seed, "cpu", order_keys=[("a",), ("b",)])
        self._generator = self._derived_generator("noise")

    def next_batch(self):
        first, second = (order.take(self.batch_size) for order in self._orders)
        return torch.stack([first, second], 1), torch.rand(self.batch_size, generator=self._generator)


def test_the_shared_stream_base_orders_counts_epochs_and_resumes():
    stream = TwoOrderStream(5, batch_size=3, seed=2)
    seen = torch.cat([next(iter(stream))[0], stream.next_batch()[0]])[:5]  # 6 items: epoch 0, then 1 more
    assert len(stream) == 5 and torch.equal(seen.sort(0).values, torch.arange(5).view(5, 1).expand(5, 2))
    assert not torch.equal(seen[:, 0], seen[:, 1]) and stream.epoch == 1  # each order its own permutation
    state = stream.state_dict()
    assert " ".join(state) == "kind seed num_digits batch_size epochs positions generator_state"
    assert (state["epochs"], state["positions"]) == ([1, 1], [1, 1])
    ahead = [stream.next_batch() for _ in range(3)]
    resumed = TwoOrderStream(5, batch_size=3, seed=2)
    resumed.load_state_dict(state)
    for (x, y), (x2, y2) in zip(ahead, [resumed.next_batch() for _ in range(3)], strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match=r"TwoOrderStream\.load_state_dict: the state is for num_digits=5"):
        TwoOrderStream(6, batch_size=3, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TwoOrderStream(5, batch_size=0, seed=2)


def test_per_sample_dataset_is_seeded_per_index_and_epoch(mnist):
    dataset = DistortedMNIST("rts", mnist.train_images, mnist.train_labels, seed=0)
    image, label = dataset[5]
    assert image.shape == (1, 42, 42) and label == mnist.train_labels[5] and len(dataset) == 300
    assert torch.equal(dataset[5][0], image)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5][0], image)
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert batch.shape == (8, 1, 42, 42) and labels.dtype == torch.int64


@pytest.mark.gpu
def test_stream_on_gpu_keeps_everything_on_the_device(mnist):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cpu = make_stream(DistortedStream, "tc", mnist)
    gpu = DistortedStream(
        "tc",
        mnist.train_images,
        mnist.train_labels,
        64,
        seed=3,
        device="cuda",
        clutter_source=mnist.train_images,
    )
    for _ in range(3):
        (x_cpu, y_cpu), (x_gpu, y_gpu) = cpu.next_batch(), gpu.next_batch()
        assert x_gpu.is_cuda and y_gpu.is_cuda and torch.equal(y_gpu.cpu(), y_cpu)
        assert (x_gpu.cpu() - x_cpu).abs().max() <= 1 / 255 + 1e-6


def test_a_records_test_set_summary_matches_the_stored_sets_checksum_and_one_pixel_breaks_it(tmp_path):
    images = torch.randint(
        0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = torch.tensor([0, 1, 2, 3, 4])
    write_set(
        set_path("r", "test", tmp_path), {"images": images, "labels": labels}, {"set_name": "r", "seed": 1}
    )
    record = {"test_set": summarise_test_set("mnist", images, labels)}
    assert record["test_set"]["size"] == 5 and record["test_set"]["source"] == "mnist"
    assert record["test_set"]["sha256"] == stored_set_checksum(
        "r", "test", tmp_path
    )  # what make table compares
    assert scored_on(record, images, labels)
    changed = images.clone()
    changed[4, 0, 27, 27] ^= 1  # one grey level on one pixel
    assert not scored_on(record, changed, labels) and not scored_on({}, images, labels)


def test_sample_sheets_draw_every_set_including_the_study_sets(tmp_path):
    from stn_repro.data.sheets import SHEET_NAMES, write_sample_sheets

    paths = write_sample_sheets(synthetic_mnist(num_train=120, num_test=8, seed=0), tmp_path, rows=2, cols=2)
    assert [p.stem for p in paths] == list(SHEET_NAMES) and "p_4px" in SHEET_NAMES
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_a_full_disk_while_writing_a_set_is_one_error_and_keeps_the_set_it_was_to_replace(
    tmp_path, monkeypatch
):
    import errno

    from stn_repro.data import sets as sets_module

    path = tmp_path / "mnist_sets" / "r_test.h5"
    data = {"images": torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "labels": torch.arange(4)}
    write_set(path, data, {"set_name": "r", "seed": 1})
    before = path.read_bytes()
    real_file = sets_module.h5py.File

    def full_disk(name, mode="r", **kwargs):
        handle = real_file(name, mode, **kwargs)
        handle.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sets_module.h5py, "File", full_disk)
    with pytest.raises(DataError, match=r"no space left on device writing .*r_test\.h5.*make data-mnist"):
        write_set(path, {**data, "labels": torch.arange(4) + 1}, {"set_name": "r", "seed": 2})
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["r_test.h5"]
