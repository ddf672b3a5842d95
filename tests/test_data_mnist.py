"""MNIST fetching and loading: clear errors with fixes, checksums, idempotence, synthetic digits, and
(marked ``real_data``) the real files, wherever tests/conftest.py finds them."""

import gzip
import hashlib
import os
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

from stn_repro.data import MNIST_MD5, fetch_mnist, load_mnist, synthetic_mnist
from stn_repro.data import mnist as mnist_module
from stn_repro.data.files import DataError, default_data_dir, download_verified

FIRST = "train-images-idx3-ubyte"  # fetch_mnist handles the files in MNIST_MD5's order


@pytest.fixture(autouse=True)
def no_source_env(monkeypatch):
    monkeypatch.delenv("STN_MNIST_SOURCE", raising=False)


def test_missing_source_file_names_it_and_the_fix(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(DataError, match=rf"{FIRST} not found in .*source.*fix: copy the four MNIST files"):
        fetch_mnist(tmp_path / "data", source)
    with pytest.raises(DataError, match="does not exist"):
        fetch_mnist(tmp_path / "data", tmp_path / "nowhere")


def test_corrupt_gzip_names_the_file(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / f"{FIRST}.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=rf"{FIRST}\.gz is not a valid gzip file.*copy or download it again"):
        fetch_mnist(tmp_path / "data", source)


def test_wrong_checksum_says_which_file_expected_and_got(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    payload = b"\x00\x00\x08\x03" + bytes(100)
    (source / f"{FIRST}.gz").write_bytes(gzip.compress(payload))
    got = hashlib.md5(payload).hexdigest()
    with pytest.raises(
        DataError,
        match=rf"checksum mismatch for MNIST file {FIRST}.*expected md5 {MNIST_MD5[FIRST]}, got {got}",
    ):
        fetch_mnist(tmp_path / "data", source)
    assert not (tmp_path / "data" / "mnist" / FIRST).exists()  # nothing unverified is kept


def test_no_source_and_no_network_says_how_to_fetch_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", offline)
    monkeypatch.setattr(mnist_module.time, "sleep", lambda seconds: None)
    with pytest.raises(DataError, match=r"could not download MNIST file .*no network.*STN_MNIST_SOURCE="):
        fetch_mnist(tmp_path / "data")


# --- download_verified: the checked download the data modules share --------------------------------------


def test_download_verified_publishes_a_good_file_with_ordinary_permissions(tmp_path, monkeypatch):
    served = tmp_path / "served" / "archive.tgz"
    served.parent.mkdir()
    served.write_bytes(b"the archive")
    dest = tmp_path / "dest"
    dest.mkdir()
    sleeps = []
    monkeypatch.setattr(mnist_module.time, "sleep", sleeps.append)
    checked = []

    def check(path):
        checked.append(path.read_bytes())
        return None if mnist_module.md5_file(path) == hashlib.md5(b"the archive").hexdigest() else "md5 wrong"

    # The first URL cannot be reached; the second serves the file.
    urls = [(tmp_path / "nowhere.tgz").as_uri(), served.as_uri()]
    path = dest / "archive.tgz"
    assert download_verified(urls, path, check, attempts=2, corrupt_fix="-", offline_fix="-") == path
    assert path.read_bytes() == b"the archive" and checked == [b"the archive"]
    assert sleeps == [1.0, 2.0]  # after each failed try of the first URL
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert os.listdir(dest) == ["archive.tgz"]


def test_download_verified_discards_a_corrupt_download_at_once(tmp_path, monkeypatch):
    served = tmp_path / "archive.tgz"
    served.write_bytes(b"truncated")
    dest = tmp_path / "dest"
    dest.mkdir()
    monkeypatch.setattr(mnist_module.time, "sleep", lambda seconds: None)
    tries = []

    def check(path):
        tries.append(path)
        return "md5 abc, expected def"

    with pytest.raises(
        DataError,
        match=rf"the download of {served.as_uri()} is not the official archive\.tgz \(md5 abc, expected def\) "
        r"and was discarded; fix: retry, or set STN_X_SOURCE$",
    ):
        download_verified(
            [served.as_uri()] * 2,
            dest / "archive.tgz",
            check,
            attempts=2,
            corrupt_fix="retry, or set STN_X_SOURCE",
            offline_fix="-",
        )
    assert len(tries) == 1  # a wrong file is not a transient failure: no retry
    assert os.listdir(dest) == []


def test_download_verified_unreachable_urls_give_the_no_network_message(tmp_path, monkeypatch):
    dest = tmp_path / "dest"
    dest.mkdir()
    monkeypatch.setattr(mnist_module.time, "sleep", lambda seconds: None)
    never = lambda path: pytest.fail("nothing was downloaded, so nothing is checked")  # noqa: E731
    first, second = "http://first.invalid/a.tgz", "http://second.invalid/a.tgz"

    def offline(url, timeout):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", offline)
    # Several URLs: the message names the file, and each failure its URL.
    with pytest.raises(DataError) as error:
        download_verified(
            [first, second], dest / "a.tgz", never, attempts=2, corrupt_fix="-", offline_fix="set X"
        )
    assert str(error.value) == (
        f"could not download a.tgz (no network?): {first}: <urlopen error no network for {first}>; "
        f"{first}: <urlopen error no network for {first}>; {second}: <urlopen error no network for {second}>; "
        f"{second}: <urlopen error no network for {second}>. Fix: set X"
    )
    # One URL: the message names it once.
    with pytest.raises(
        DataError, match=rf"^could not download {first} \(no network\?\): <urlopen error .*Fix: set X$"
    ):
        download_verified(first, dest / "a.tgz", never, attempts=1, corrupt_fix="-", offline_fix="set X")
    assert os.listdir(dest) == []


def test_download_verified_removes_the_temporary_on_an_interrupt(tmp_path):
    served = tmp_path / "archive.tgz"
    served.write_bytes(b"data")
    dest = tmp_path / "dest"
    dest.mkdir()

    def interrupted(path):
        assert path.parent == dest and path.is_file()  # the temporary sits next to the destination
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_verified(
            served.as_uri(), dest / "archive.tgz", interrupted, attempts=2, corrupt_fix="-", offline_fix="-"
        )
    assert os.listdir(dest) == []


def test_load_without_files_says_run_make_data_mnist(tmp_path):
    with pytest.raises(DataError, match=r"is missing; fix: run `make data-mnist`.*STN_MNIST_SOURCE"):
        load_mnist(tmp_path)


def test_truncated_idx_file_is_reported():
    with pytest.raises(DataError, match="truncated"):
        mnist_module._parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc", Path("labels"))
    labels = mnist_module._parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x08\x09", Path("labels"))
    assert labels.tolist() == [7, 8, 9] and labels.dtype == torch.uint8


def test_default_data_dir_honours_stn_data(monkeypatch, tmp_path):
    monkeypatch.delenv("STN_DATA", raising=False)
    assert default_data_dir() == Path(__file__).resolve().parents[1] / "data"
    monkeypatch.setenv("STN_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_synthetic_digits_are_mnist_shaped_deterministic_and_learnable():
    data = synthetic_mnist(num_train=500, num_test=200, seed=0)
    assert data.train_images.shape == (500, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_labels.dtype == torch.int64 and set(data.train_labels.tolist()) == set(range(10))
    assert torch.equal(synthetic_mnist(500, 200, 0).train_images, data.train_images)
    # Centred like MNIST: the ink's centroid is near the image centre, the border is empty.
    assert data.train_images[:, :2].sum() == 0 and data.train_images[:, :, :3].sum() == 0
    # Nearest class mean already separates the classes.
    train, test = data.train_images.flatten(1).float(), data.test_images.flatten(1).float()
    means = torch.stack([train[data.train_labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(test, means).argmin(1) == data.test_labels).float().mean()
    assert accuracy > 0.9


# --- real MNIST ----------------------------------------------------------------------------------------------


@pytest.fixture
def shared_mnist(real_mnist):
    return real_mnist


@pytest.mark.real_data
def test_fetch_from_the_shared_copy_then_load_then_fetch_again_is_a_no_op(tmp_path, shared_mnist):
    folder = fetch_mnist(tmp_path, shared_mnist)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_MD5)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert fetch_mnist(tmp_path, shared_mnist) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    data = load_mnist(tmp_path)
    assert data.train_images.shape == (60000, 28, 28) and data.test_images.shape == (10000, 28, 28)
    assert (
        data.train_labels[:5].tolist() == [5, 0, 4, 1, 9] and data.test_labels.bincount().tolist()[1] == 1135
    )
    # Raw (uncompressed) files are accepted as a source too, here the ones just fetched.
    assert fetch_mnist(tmp_path / "again", folder) == tmp_path / "again" / "mnist"


@pytest.mark.real_data
def test_a_corrupted_fetched_file_is_replaced(tmp_path, shared_mnist, monkeypatch):
    folder = fetch_mnist(tmp_path, shared_mnist)
    shutil.copyfile(folder / "t10k-labels-idx1-ubyte", folder / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="md5 check"):
        load_mnist(tmp_path)
    monkeypatch.setenv("STN_MNIST_SOURCE", str(shared_mnist))
    fetch_mnist(tmp_path)
    assert load_mnist(tmp_path).test_images.shape == (10000, 28, 28)
