"""CUB-200-2011 data: the fixture writer writes CUB's exact format, the reader checks it and says what is
wrong in one line, make data-cub's preparation is atomic, crops follow the recipe, the stream resumes
exactly whatever its workers, and sharding over processes partitions one process's batches."""

import re
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from stn_repro.data.cub.dataset import CubCrops, CubDataset, CubStream, augmentation_seed
from stn_repro.data.cub.index import OFFICIAL_COUNTS, load_cub_index, read_cub_index
from stn_repro.data.cub.prepare import prepare_cub
from stn_repro.data.files import DataError
from stn_repro.data.synthetic.cub import build_synthetic_cub, write_cub_tree

CLASSES, PER_CLASS = 3, 6


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_cub_tree(
        tmp_path_factory.mktemp("cub") / "src", PER_CLASS, CLASSES, image_size=(40, 56), seed=3
    )


def test_the_fixture_tree_is_in_cubs_exact_layout_and_formats(tree):
    names = {p.name for p in tree.iterdir()}
    assert {"images", "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"} <= names
    images = (tree / "images.txt").read_text().splitlines()
    assert len(images) == CLASSES * PER_CLASS
    for k, line in enumerate(images, 1):  # "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
        image_id, path = line.split(" ")
        assert int(image_id) == k and re.fullmatch(r"\d{3}\.[A-Za-z0-9_]+/[A-Za-z0-9_]+_\d{4}_\d+\.jpg", path)
        with Image.open(tree / "images" / path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            width, height = image.size
        x, y, w, h = map(float, (tree / "bounding_boxes.txt").read_text().splitlines()[k - 1].split()[1:])
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 0.1 and y + h <= height + 0.1
    assert [line.split()[0] for line in images] == [str(k) for k in range(1, len(images) + 1)]
    paths = [line.split()[1] for line in images]
    folders = [path.split("/")[0] for path in paths]
    assert folders == sorted(folders)  # class folder by class folder, as CUB's ids
    # ... but, as in CUB's images.txt, not in file-name order within a class: no code may depend on it
    assert any(paths[k] > paths[k + 1] for k in range(len(paths) - 1) if folders[k] == folders[k + 1])
    classes = (tree / "classes.txt").read_text().splitlines()
    assert [c.split()[0] for c in classes] == ["1", "2", "3"] and classes[0].split()[1].startswith("001.")
    labels = [line.split() for line in (tree / "image_class_labels.txt").read_text().splitlines()]
    assert all(paths[int(i) - 1].startswith(f"{int(c):03d}.") for i, c in labels)
    flags = [line.split()[1] for line in (tree / "train_test_split.txt").read_text().splitlines()]
    assert set(flags) == {"0", "1"} and flags.count("1") == CLASSES * (PER_CLASS // 2)


def test_the_writer_is_deterministic(tree, tmp_path):
    again = write_cub_tree(tmp_path, PER_CLASS, CLASSES, image_size=(40, 56), seed=3)
    for name in ("images.txt", "bounding_boxes.txt", "train_test_split.txt"):
        assert (again / name).read_bytes() == (tree / name).read_bytes()
    first = (tree / "images.txt").read_text().split()[1]
    assert (again / "images" / first).read_bytes() == (tree / "images" / first).read_bytes()


def test_the_index_reads_back_and_is_labelled_synthetic(tree):
    index = read_cub_index(tree)
    assert index.synthetic and index.num_classes == CLASSES and len(index.paths) == CLASSES * PER_CLASS
    assert index.labels.tolist() == [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    assert len(index.split("train")) == len(index.split("test")) == 9
    assert index.boxes.shape == (18, 4) and index.image_ids.tolist() == list(range(1, 19))


def test_every_fault_in_a_tree_is_one_line_naming_it_and_the_fix(tree, tmp_path):
    with pytest.raises(DataError, match="11,788") as official:
        read_cub_index(tree, expect_official=True)
    assert "\n" not in str(official.value) and OFFICIAL_COUNTS["train"] == 5_994
    broken = write_cub_tree(tmp_path, PER_CLASS, CLASSES, image_size=(40, 56), seed=3)
    missing = (broken / "images.txt").read_text().splitlines()[4].split()[1]
    (broken / "images" / missing).unlink()
    with pytest.raises(DataError) as error:
        read_cub_index(broken)
    line = str(error.value)
    assert "1 of the 18 images" in line and missing in line and "make data-cub-synthetic" in line
    labels = (broken / "image_class_labels.txt").read_text()
    (broken / "image_class_labels.txt").write_text("1 1\n2 9\n")
    with pytest.raises(DataError, match=r"image_class_labels\.txt lists 2 images"):
        read_cub_index(broken, check_files=False)
    (broken / "image_class_labels.txt").write_text(labels.replace("\n2 1\n", "\n2 9\n"))
    with pytest.raises(DataError, match=r"image 2 has class 9, outside 1\.\.3"):
        read_cub_index(broken, check_files=False)
    (broken / "image_class_labels.txt").write_text(labels)
    (broken / "train_test_split.txt").write_text("garbage\n")
    with pytest.raises(DataError, match=r"train_test_split.txt:1: expected 2 fields"):
        read_cub_index(broken, check_files=False)


def test_make_data_cub_checks_and_places_a_tree_atomically(tree, tmp_path):
    archive = tmp_path / "CUB_200_2011.tgz"
    (tmp_path / "attributes.txt").write_text("1 has_bill_shape::curved\n")  # the official archive has it too
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="CUB_200_2011")
        tar.add(tmp_path / "attributes.txt", arcname="attributes.txt")
    lines = []
    target = prepare_cub(tmp_path / "a", archive, expect_official=False, log=lines.append)
    assert target == tmp_path / "a" / "CUB_200_2011" and read_cub_index(target).num_classes == CLASSES
    assert prepare_cub(tmp_path / "a", archive, expect_official=False, log=lines.append) == target
    assert lines[-1].endswith("up to date")
    assert not list((tmp_path / "a").glob(".cub-extract-*"))

    # A folder (the extracted tree, or one holding it) works the same way.
    assert prepare_cub(tmp_path / "b", tree.parent, expect_official=False, log=lines.append).is_dir()

    # The official checks: the md5 of an archive, the counts of a folder; nothing is left behind.
    with pytest.raises(DataError, match=r"not the official CUB_200_2011\.tgz"):
        prepare_cub(tmp_path / "c", archive, log=lines.append)
    with pytest.raises(DataError, match="the official CUB-200-2011 has images 11,788"):
        prepare_cub(tmp_path / "c", tree, log=lines.append)
    truncated = tmp_path / "cut" / "CUB_200_2011.tgz"
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        prepare_cub(tmp_path / "c", truncated, expect_official=False, log=lines.append)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == []
    with pytest.raises(DataError, match="STN_CUB_SOURCE"):
        prepare_cub(tmp_path / "c", tmp_path / "nowhere", log=lines.append)


def test_a_missing_set_names_the_make_target(tmp_path):
    with pytest.raises(DataError, match="make data-cub-synthetic"):
        load_cub_index(tmp_path, synthetic=True)
    with pytest.raises(DataError, match=r"make data-cub`.*STN_CUB_SOURCE"):
        load_cub_index(tmp_path)


def test_the_synthetic_stand_in_is_built_once_and_read_by_the_real_loader(tmp_path):
    lines = []
    root = build_synthetic_cub(tmp_path, classes=4, images_per_class=4, image_size=(48, 64), log=lines.append)
    assert root == tmp_path / "synthetic-cub" / "CUB_200_2011" and "SYNTHETIC" in lines[-1]
    build_synthetic_cub(tmp_path, classes=4, images_per_class=4, image_size=(48, 64), log=lines.append)
    assert lines[-1].endswith("up to date")
    assert load_cub_index(tmp_path, synthetic=True).num_classes == 4


def test_crops_follow_the_recipe_and_images_are_unnormalised(tree):
    index = read_cub_index(tree)
    crops = CubCrops(resize=73, crop=64)
    dataset = CubDataset(index, "test", crops)
    image, label = dataset[0]
    assert (
        image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )
    assert label == index.labels[dataset.row(0)]
    # Test crop: the shorter side to 73 px, then the central 64 px window.
    original = Image.open(index.image_path(dataset.row(0))).convert("RGB")
    width, height = original.size
    size = (73, round(height * 73 / width)) if width < height else (round(width * 73 / height), 73)
    resized = np.asarray(original.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    top, left = (resized.shape[0] - 64) // 2, (resized.shape[1] - 64) // 2
    expected = torch.from_numpy(resized[top : top + 64, left : left + 64]).permute(2, 0, 1) / 255
    assert (image - expected).abs().mean() < 0.02  # the same window (resampling filters differ slightly)
    # Training crop: decided by the key's seed alone; uint8 output is the same image in 0-255.
    train = CubDataset(index, "train", crops)
    assert torch.equal(train[(2, 123)][0], train[(2, 123)][0])
    assert not torch.equal(train[(2, 123)][0], train[(2, 124)][0])
    as_bytes = CubDataset(index, "train", crops, dtype=torch.uint8)[(2, 123)][0]
    assert as_bytes.dtype == torch.uint8 and torch.allclose(as_bytes.float() / 255, train[(2, 123)][0])
    flips = {bool(np.random.default_rng(s).random(3)[2] < 0.5) for s in range(20)}
    assert flips == {True, False}
    assert CubCrops(256, 224).scaled(64 / 224) == CubCrops(73, 64)


@pytest.mark.parametrize("size", [(48, 64), (64, 48), (333, 500), (500, 333), (101, 101), (257, 1000)])
def test_resized_size_and_central_window_match_torchvision(size):
    # object_boxes_in_crops maps the annotated boxes with these; the images go through torchvision.
    crops = CubCrops(resize=73, crop=64)
    resized = TF.resize(Image.new("RGB", size), [crops.resize], antialias=True)
    assert crops.resized_size(*size) == resized.size
    left, top = crops.central_window(*resized.size)
    assert TF.crop(resized, top, left, 64, 64).size == (64, 64)
    assert 0 <= left <= resized.size[0] - 64 and 0 <= top <= resized.size[1] - 64
    assert abs((resized.size[0] - 64 - left) - left) <= 1 and abs((resized.size[1] - 64 - top) - top) <= 1


def batches(stream, count):
    return [stream.next_batch() for _ in range(count)]


def test_the_stream_resumes_exactly_and_workers_change_nothing(tree):
    dataset = CubDataset(read_cub_index(tree), "train", CubCrops(37, 32), dtype=torch.uint8)
    straight = CubStream(dataset, 2, seed=7)
    assert straight.batches_per_epoch == 4
    expected = batches(straight, 7)  # crosses an epoch boundary
    first = CubStream(dataset, 2, seed=7)
    batches(first, 3)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 3)
    resumed = CubStream(dataset, 2, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (ex, ey) in zip(batches(resumed, 4), expected[3:], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert expected[0][0].dtype == torch.float32 and expected[0][0].max() <= 1
    parallel = CubStream(dataset, 2, seed=7, workers=2)
    for (x, y), (ex, ey) in zip(batches(parallel, 5), expected[:5], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    parallel.close()
    other = CubStream(CubDataset(read_cub_index(tree), "train", CubCrops(37, 32)), 3, seed=7)
    with pytest.raises(ValueError, match="batch_size=2"):
        other.load_state_dict(state)


def test_sharded_streams_partition_one_processs_global_batches(tree):
    dataset = CubDataset(read_cub_index(tree), "train", CubCrops(37, 32))
    one = CubStream(dataset, 4, seed=5)
    ranks = [CubStream(dataset, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    assert one.batches_per_epoch == ranks[0].batches_per_epoch == 2
    for epoch in range(3):
        for k in range(2):
            union = sorted(ranks[0].epoch_batches(epoch)[k] + ranks[1].epoch_batches(epoch)[k])
            assert union == sorted(one.epoch_batches(epoch)[k])
    item, seed = one.epoch_batches(1)[0][0]
    assert seed == augmentation_seed(5, 1, int(dataset.rows[item]))
    with pytest.raises(ValueError, match=r"lower trainer\.batch_size"):
        CubStream(dataset, 5, seed=5, world_size=2)
