"""SVHN data: the digitStruct.mat layout (checked against the raw HDF5, and read from a file written
independently of ``write_digit_struct``), the crop recipe against hand-computed boxes, the importer end to
end on a tiny format-1 tree (folders and archives), every bad input's error, the training stream
(determinism, exact resume); the synthetic stand-in has tests/test_data_synthetic_svhn.py."""

import io
import tarfile
import urllib.error

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from stn_repro.data import mnist as mnist_module
from stn_repro.data import set_checksum
from stn_repro.data.files import DataError
from stn_repro.data.svhn.crops import (
    MAX_DIGITS,
    NO_DIGIT,
    center_crop,
    crop_and_resize,
    crop_box,
    encode_labels,
)
from stn_repro.data.svhn.digit_struct import SvhnImage, read_digit_struct, write_digit_struct
from stn_repro.data.svhn.importer import download_svhn, import_svhn
from stn_repro.data.svhn.stored import SVHN_VERSION, load_svhn_set, read_svhn_attrs, svhn_set_path
from stn_repro.data.svhn.stream import SvhnStream

# name, image (width, height), boxes (left, top, width, height), raw labels (10 = digit 0)
TRAIN = [
    ("1.png", (30, 20), [(5, 4, 8, 12)], [10]),
    ("2.png", (40, 24), [(4, 5, 6, 12), (11, 5, 6, 12), (18, 6, 6, 12)], [1, 10, 9]),
    ("3.png", (60, 20), [(2 + 9 * k, 4, 7, 10) for k in range(6)], [1, 2, 3, 4, 5, 6]),  # 6 digits: dropped
    ("4.png", (32, 32), [(6, 8, 9, 14), (16, 9, 9, 14)], [7, 3]),
    ("5.png", (64, 24), [(3 + 11 * k, 5, 9, 14) for k in range(5)], [2, 4, 6, 8, 10]),
    ("6.png", (25, 30), [(-3, 2, 10, 20)], [5]),  # reaches past the left edge: kept
    ("7.png", (36, 22), [(8, 3, 8, 15), (17, 3, 8, 15)], [10, 10]),
    ("8.png", (28, 28), [(10, 6, 9, 16)], [4]),
]
TEST = [
    ("1.png", (30, 20), [(6, 3, 8, 13)], [3]),
    ("2.png", (44, 26), [(5, 6, 8, 13), (14, 6, 8, 13), (23, 6, 8, 13)], [9, 9, 1]),
    ("3.png", (30, 30), [(9, 7, 10, 16)], [10]),
]


def records(rows):
    return [SvhnImage(name, np.array(boxes, dtype=float), list(labels)) for name, _, boxes, labels in rows]


def write_split(folder, rows, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (width, height), _, _ in rows:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    write_digit_struct(folder / "digitStruct.mat", records(rows))


@pytest.fixture
def tree(tmp_path):
    source = tmp_path / "source"
    write_split(source / "train", TRAIN, seed=1)
    write_split(source / "test", TEST, seed=2)
    return source


def h5_files(root):
    return sorted(p.name for p in root.rglob("*.h5"))


def quiet(_line):
    pass


# --- digitStruct.mat ------------------------------------------------------------------------------------


def test_digit_struct_has_the_matlab_layout(tmp_path):
    path = tmp_path / "digitStruct.mat"
    write_digit_struct(path, records(TRAIN))
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as handle:
        names, bboxes = handle["digitStruct/name"], handle["digitStruct/bbox"]
        assert names.shape == bboxes.shape == (len(TRAIN), 1)
        assert h5py.check_ref_dtype(names.dtype) is h5py.Reference
        chars = handle[names[1, 0]]
        assert chars.dtype == np.uint16 and chars.shape == (5, 1)
        assert "".join(map(chr, chars[()].ravel())) == "2.png"
        one = handle[bboxes[0, 0]]  # 1.png: one digit, every field holds its value
        assert sorted(one) == ["height", "label", "left", "top", "width"]
        assert one["label"].dtype == np.float64 and one["label"].shape == (1, 1)
        assert one["label"][0, 0] == 10 and one["left"][0, 0] == 5 and one["height"][0, 0] == 12
        three = handle[bboxes[1, 0]]  # 2.png: three digits, every field is a column of references
        assert h5py.check_ref_dtype(three["label"].dtype) is h5py.Reference
        assert three["label"].shape == (3, 1)
        assert [handle[ref][0, 0] for ref in three["label"][:, 0]] == [1, 10, 9]
        assert [handle[ref].shape for ref in three["top"][:, 0]] == [(1, 1)] * 3
        assert [handle[ref][0, 0] for ref in three["left"][:, 0]] == [4, 11, 18]


def test_digit_struct_round_trips_and_is_byte_identical(tmp_path):
    write_digit_struct(tmp_path / "a.mat", records(TRAIN))
    write_digit_struct(tmp_path / "b.mat", records(TRAIN))
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    assert not list(tmp_path.glob(".*tmp"))
    assert read_digit_struct(tmp_path / "a.mat") == records(TRAIN)


def test_reads_a_digit_struct_written_independently(tmp_path):
    """The reader against a file built with h5py's high-level API from the documented layout alone."""
    path = tmp_path / "digitStruct.mat"
    with h5py.File(path, "w") as handle:
        store = handle.create_group("objects")

        def value(name, data):
            return store.create_dataset(name, data=data).ref

        name_refs = [
            value("n0", np.array([[ord(c)] for c in "17.png"], np.uint16)),
            value("n1", [[50], [46]]),
        ]
        one = store.create_group("b0")
        for key, number in {"height": 30.0, "left": 12.0, "top": 7.0, "width": 14.0, "label": 7.0}.items():
            one[key] = np.array([[number]])
        two = store.create_group("b1")
        columns = {"height": [9, 9], "left": [1, 6], "top": [2, 2], "width": [4, 5], "label": [10, 3]}
        for key, numbers in columns.items():
            refs = [value(f"{key}{k}", np.array([[float(n)]])) for k, n in enumerate(numbers)]
            two.create_dataset(key, data=np.array(refs, dtype=object).reshape(2, 1), dtype=h5py.ref_dtype)
        digit_struct = handle.create_group("digitStruct")
        digit_struct.create_dataset(
            "name", data=np.array(name_refs, object).reshape(2, 1), dtype=h5py.ref_dtype
        )
        digit_struct.create_dataset(
            "bbox", data=np.array([one.ref, two.ref], object).reshape(2, 1), dtype=h5py.ref_dtype
        )
    first, second = read_digit_struct(path)
    assert first.name == "17.png" and first.labels == [7]
    assert first.boxes.tolist() == [[12.0, 7.0, 14.0, 30.0]]  # (left, top, width, height)
    assert second.name == "2." and second.labels == [10, 3]
    assert second.boxes.tolist() == [[1, 2, 4, 9], [6, 2, 5, 9]]


# --- the crop recipe ------------------------------------------------------------------------------------


def test_crop_box_by_hand():
    # One 10 x 10 box at (1, 1): union x 1..11, centre 6; x 1.3: half-width 6.5, edges -0.5 and 12.5,
    # rounded halves up: 0 and 13.
    assert crop_box(np.array([[1, 1, 10, 10]]), 64) == (0, 0, 13, 13)
    # x 2..6 (centre 4, half 2.6: 1.4 -> 1, 6.6 -> 7), y 3..5 (centre 4, half 1.3: 2.7 -> 3, 5.3 -> 5).
    assert crop_box(np.array([[2, 3, 4, 2]]), 64) == (1, 3, 7, 5)
    # The union of two boxes: 0..10 in x and y, centre 5; 64 px: half 6.5 -> -1.5, 11.5 -> -1, 12;
    # 128 px (twice the 64 px box): half 13 -> -8, 18.
    boxes = np.array([[0, 0, 2, 2], [8, 6, 2, 4]])
    assert crop_box(boxes, 64) == (-1, -1, 12, 12)
    assert crop_box(boxes, 128) == (-8, -8, 18, 18)
    with pytest.raises(ValueError, match="no crop recipe for 32 px; known sizes: 64, 128"):
        crop_box(boxes, 32)


def test_crop_reads_black_outside_the_image():
    # A uniform 12 x 12 image; the crop box is (0, 0, 13, 13), so column and row 12 lie outside.
    image = Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8))
    out = crop_and_resize(image, np.array([[1, 1, 10, 10]]), 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    # Output pixel j samples x = (j + 0.5) * 13 / 64; the bilinear filter reaches the black column 12
    # (centre 12.5) only for x > 11.5, i.e. j >= 57.
    assert (out[:, :57, :57] == 200).all()
    assert (out[:, 63, :] == 0).all() and (out[:, :, 63] == 0).all()
    assert (out[:, 57:63, :57] < 200).all()


def test_encode_labels_maps_ten_to_zero_and_pads():
    assert encode_labels([1, 10, 9]).tolist() == [1, 0, 9, NO_DIGIT, NO_DIGIT]
    assert encode_labels([10] * MAX_DIGITS).tolist() == [0] * 5
    with pytest.raises(ValueError):
        encode_labels([1] * 6)


# --- importing ------------------------------------------------------------------------------------------


def run_import(source, data_dir, logs=None, **kwargs):
    kwargs = {"num_validation": 2, "expect_official_counts": False, "log": quiet, **kwargs}
    if logs is not None:
        kwargs["log"] = logs.append
    return import_svhn(source, data_dir, **kwargs)


def test_import_end_to_end_then_idempotent(tree, tmp_path):
    data_dir = tmp_path / "data"
    logs = []
    paths = run_import(tree, data_dir, logs)
    assert h5_files(data_dir) == sorted(
        f"svhn_{size}px_{split}.h5" for size in (64, 128) for split in ("train", "val", "test")
    )
    assert any("dropped 1 images with more than 5 digits" in line for line in logs)
    train, val = (load_svhn_set("svhn", 64, split, data_dir) for split in ("train", "val"))
    assert len(train["labels"]) == 5 and len(val["labels"]) == 2  # 8 images, 1 dropped, 2 held out
    names = [n.decode() for n in np.concatenate([train["names"], val["names"]])]
    assert sorted(names) == sorted(name for name, *_ in TRAIN if name != "3.png")
    by_name = {
        n.decode(): (labels.tolist(), int(length))
        for part in (train, val)
        for n, labels, length in zip(part["names"], part["labels"], part["length"], strict=True)
    }
    assert by_name["1.png"] == ([0, 10, 10, 10, 10], 1)
    assert by_name["2.png"] == ([1, 0, 9, 10, 10], 3)
    assert by_name["5.png"] == ([2, 4, 6, 8, 0], 5)
    assert by_name["7.png"] == ([0, 0, 10, 10, 10], 2)
    assert train["images"].shape == (5, 3, 64, 64) and train["images"].dtype == torch.uint8
    assert train["labels"].dtype == torch.int64 and train["length"].dtype == torch.int64
    big = load_svhn_set("svhn", 128, "test", data_dir)
    assert big["images"].shape == (3, 3, 128, 128)
    assert big["labels"].tolist() == [[3, 10, 10, 10, 10], [9, 9, 1, 10, 10], [0, 10, 10, 10, 10]]
    # The stored crop is the recipe applied to the source PNG.
    with Image.open(tree / "test" / "2.png") as image:
        expected = crop_and_resize(image, np.array(TEST[1][2], float), 128)
    assert np.array_equal(big["images"][1].numpy(), expected)
    attrs = read_svhn_attrs("svhn", 64, "train", data_dir)
    assert attrs["sha256"] == set_checksum(train["images"], train["labels"])
    assert attrs["dropped_over_5_digits"] == 1 and attrs["size"] == 64 and attrs["num_validation"] == 2
    assert attrs["synthetic"] == False and attrs["generator_version"] == SVHN_VERSION  # noqa: E712
    assert "SVHN format 1" in attrs["source"]
    # A second run verifies the files and reads nothing: it works without the source.
    before = {p: p.stat().st_mtime_ns for p in paths}
    logs.clear()
    run_import(tmp_path / "gone", data_dir, logs)
    assert len(logs) == len(paths) and all("up to date" in line for line in logs)
    assert {p: p.stat().st_mtime_ns for p in paths} == before
    assert not list((data_dir / "svhn_sets").glob(".*"))  # no temporary files or folders


def test_validation_choice_is_fixed_and_seeded(tree, tmp_path):
    def val_names(data_dir, seed):
        run_import(tree, data_dir, sizes=(64,), seed=seed)
        return sorted(load_svhn_set("svhn", 64, "val", data_dir)["names"].tolist())

    first = val_names(tmp_path / "a", 1)
    assert first == val_names(tmp_path / "b", 1)
    assert any(val_names(tmp_path / f"c{seed}", seed) != first for seed in range(2, 8))


def test_import_from_archives_matches_the_folders(tree, tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    for split in ("train", "test"):
        with tarfile.open(archives / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(tree / split, arcname=split)
    run_import(tree, tmp_path / "from_folders", sizes=(64,))
    run_import(archives, tmp_path / "from_archives", sizes=(64,))
    for split in ("train", "val", "test"):
        a = read_svhn_attrs("svhn", 64, split, tmp_path / "from_folders")
        b = read_svhn_attrs("svhn", 64, split, tmp_path / "from_archives")
        assert a["sha256"] == b["sha256"] and b["source_path"].endswith(
            f"{'train' if split == 'val' else split}.tar.gz"
        )
    assert not list((tmp_path / "from_archives" / "svhn_sets").glob(".extract-*"))


def test_official_counts_are_checked(tree, tmp_path):
    with pytest.raises(DataError, match=r"train has 8 images in digitStruct\.mat and 8 PNGs, the official"):
        run_import(tree, tmp_path / "data", expect_official_counts=True)
    assert h5_files(tmp_path / "data") == []


def corrupt_digit_struct_bytes(source, _):
    (source / "test" / "digitStruct.mat").write_bytes(b"this is not an HDF5 file")


def truncate_digit_struct(source, _):
    path = source / "test" / "digitStruct.mat"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_size_box(source, _):
    rows = [*TEST[:2], ("3.png", (30, 30), [(9, 7, 0, 16)], [10])]
    write_digit_struct(source / "test" / "digitStruct.mat", records(rows))


def box_outside(source, _):
    rows = [*TEST[:2], ("3.png", (30, 30), [(31, 7, 5, 16)], [10])]
    write_digit_struct(source / "test" / "digitStruct.mat", records(rows))


def missing_png(source, _):
    (source / "test" / "2.png").unlink()


def missing_split(source, _):
    for path in (source / "test").iterdir():
        path.unlink()
    (source / "test").rmdir()


def corrupt_archive(source, _):
    missing_split(source, _)
    (source / "test.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_digit_struct_bytes, r"test/digitStruct\.mat is not a readable HDF5 .*fix: replace it"),
        (truncate_digit_struct, r"test/digitStruct\.mat (is not a readable HDF5|is unreadable).*fix:"),
        (
            zero_size_box,
            r"test/digitStruct\.mat: digit box 1 of image 3 \(3\.png\) has zero or negative size",
        ),
        (box_outside, r"test/digitStruct\.mat: digit box 1 of 3\.png .* lies entirely outside the 30x30"),
        (missing_png, r"SVHN image .*test/2\.png is missing \(listed in .*digitStruct\.mat\); fix:"),
        (missing_split, r"split 'test' not found in .*source: expected the folder .*test.tar.gz; fix:"),
        (corrupt_archive, r"SVHN archive .*test\.tar\.gz is corrupt or truncated .*fix: delete it"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(tree, tmp_path, damage, message):
    damage(tree, tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=message):
        run_import(tree, data_dir)  # train is fine: nothing is written before every split checks out
    assert h5_files(data_dir) == []
    assert not list((data_dir / "svhn_sets").glob(".extract-*"))


def test_missing_source_folder_and_missing_sets(tmp_path):
    with pytest.raises(DataError, match=r"SVHN source folder .*nowhere does not exist.*STN_SVHN_SOURCE"):
        run_import(tmp_path / "nowhere", tmp_path / "data")
    with pytest.raises(DataError, match=r"svhn_64px_test\.h5 is missing; fix: run `make data-svhn`"):
        load_svhn_set("svhn", 64, "test", tmp_path)
    with pytest.raises(
        DataError, match=r"svhn_64px_extra\.h5 is missing; fix: run `make data-svhn SVHN_ARGS=--extra`"
    ):
        load_svhn_set("svhn", 64, "extra", tmp_path)
    with pytest.raises(DataError, match=r"synthetic-svhn_64px_val\.h5 is missing.*make data-svhn-synthetic"):
        load_svhn_set("synthetic-svhn", 64, "val", tmp_path)
    with pytest.raises(ValueError, match="unknown SVHN split 'dev'"):
        svhn_set_path("svhn", 64, "dev")


def test_modified_or_outdated_set_fails_and_is_rebuilt(tree, tmp_path):
    data_dir = tmp_path / "data"
    run_import(tree, data_dir, sizes=(64,))
    path = svhn_set_path("svhn", 64, "test", data_dir)
    with h5py.File(path, "r+") as handle:
        handle["images"][0, 0, 0, 0] = 255 - handle["images"][0, 0, 0, 0]
    with pytest.raises(DataError, match=r"svhn_64px_test\.h5 fails its sha256 check.*make data-svhn"):
        load_svhn_set("svhn", 64, "test", data_dir)
    logs = []
    run_import(tree, data_dir, logs, sizes=(64,))
    assert [line for line in logs if "wrote" in line] == ["  svhn_64px_test.h5: wrote (3, 3, 64, 64)"]
    with h5py.File(path, "r+") as handle:
        handle.attrs["generator_version"] = 0
    with pytest.raises(DataError, match=r"outdated: generator version 0, this code makes 1.*make data-svhn"):
        load_svhn_set("svhn", 64, "test", data_dir)


def test_download_failures_leave_no_file(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    # The download itself is stn_repro.data.mnist.download_verified's (tested in test_data_mnist.py).
    monkeypatch.setattr(mnist_module.time, "sleep", lambda _: None)
    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"could not download http://ufldl.*test\.tar\.gz.*STN_SVHN_SOURCE"):
        download_svhn(tmp_path, ("test",))
    monkeypatch.setattr(
        mnist_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"wrong bytes")
    )
    with pytest.raises(
        DataError, match=r"download of http://ufldl.*/test\.tar\.gz is not the official test\.tar\.gz \(md5 "
    ):
        download_svhn(tmp_path, ("test",))
    assert list((tmp_path / "svhn").iterdir()) == []


# --- training data --------------------------------------------------------------------------------------


def stream_data(count=10, size=8):
    images = torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 11, (count, 5), generator=torch.Generator().manual_seed(1))
    return images.to(torch.uint8), labels


def test_stream_gives_random_crops_of_the_images():
    images, labels = stream_data()
    stream = SvhnStream(images, labels, batch_size=4, seed=3, crop=5)
    for _ in range(5):
        x, y = stream.next_batch()
        assert x.shape == (4, 3, 5, 5) and x.dtype == torch.float32 and y.shape == (4, 5)
        assert x.is_contiguous() and 0 <= x.min() and x.max() <= 1
        for crop, label in zip(x, y, strict=True):
            matches = [
                (i, top, left)
                for i in range(len(images))
                for top in range(4)
                for left in range(4)
                if torch.equal((crop * 255).round().byte(), images[i, :, top : top + 5, left : left + 5])
            ]
            assert matches and torch.equal(labels[matches[0][0]], label)
    whole, _ = SvhnStream(images, labels, batch_size=10, seed=3, crop=None).next_batch()
    assert torch.equal(whole.mul(255).round().byte().sort(0).values, images.sort(0).values)


def test_stream_is_seeded_and_resumes_exactly():
    images, labels = stream_data()

    def make(seed=3):
        return SvhnStream(images, labels, batch_size=4, seed=seed, crop=5)

    first = make().next_batch()
    assert all(torch.equal(a, b) for a, b in zip(first, make().next_batch(), strict=True))
    assert not torch.equal(first[0], make(seed=4).next_batch()[0])
    stream = make()
    for _ in range(3):  # 12 images: crosses the epoch boundary at 10
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(4)]
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for (x, y), (x2, y2) in zip(expected, [resumed.next_batch() for _ in range(4)], strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="state is for seed=3, this stream has 4"):
        make(seed=4).load_state_dict(state)


def test_center_crop():
    images, _ = stream_data(count=2, size=64)
    out = center_crop(images, 54)
    assert out.shape == (2, 3, 54, 54) and torch.equal(out, images[:, :, 5:59, 5:59])
    assert center_crop(images, None) is images


# --- synthetic stand-in: tests/test_data_synthetic_svhn.py ------------------------------------------------


def test_cli_reports_one_error_line(tmp_path, tree, capsys):
    from data_scripts.build_svhn_sets import main

    assert main(["--synthetic", "--data-dir", str(tmp_path / "empty"), "--sizes", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the synthetic SVHN stand-in is built from MNIST digits: MNIST file")
    assert "make data-mnist" in err and "STN_MNIST_SOURCE" in err and err.count("\n") == 1
    assert main(["--source", str(tree), "--data-dir", str(tmp_path / "d"), "--sizes", "64"]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "the official train split has 33402" in err and "Traceback" not in err
    )
