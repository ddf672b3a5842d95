"""The CUB runner: every config composes, the paper profile is the paper's protocol, CNN and ST-CNN cells
run end to end on a fixture tree, resume is exact, the Table 3 writer labels what it shows, two gloo
processes equal one (gradients) and a 2-process run finishes and resumes, and the SLURM launcher's
submission is what its config says."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from experiments.cub import initial_weights, spec_from_config
from stn_analysis.diagnostics.cub_parts import main as cub_parts_main
from stn_analysis.tables.cli import main as table_main
from stn_repro.data.cub.dataset import CubCrops, CubDataset, CubStream
from stn_repro.data.cub.index import read_cub_index
from stn_repro.data.files import DataError
from stn_repro.data.synthetic.cub import write_cub_tree
from stn_repro.models.cub import build_cub_model
from stn_repro.paper import cub_paper_accuracy
from stn_repro.tasks.cub import (
    box_coverage,
    load_trained_cub_model,
    object_boxes_in_crops,
    part_placement,
    run_cub_seed,
)
from stn_repro.training.data_parallel import (
    DistContext,
    LoaderLearner,
    distributed_environment,
    init_distributed,
    leave_distributed,
)
from stn_repro.training.run_folder import RunLock

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CUB_EXPERIMENTS = sorted(f"cub/{p.stem}" for p in (CONFIGS / "experiment" / "cub").glob("*.yaml"))
QUIET = {"log": lambda s: None}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny synthetic stand-in where the runner looks for it: 3 classes x 6 images (9 train, 9 test)."""
    root = tmp_path_factory.mktemp("cub-data")
    write_cub_tree(root / "synthetic-cub", 6, 3, image_size=(40, 56), seed=3)
    return root


def compose_cub(overrides, data_dir=None):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("cub", overrides=overrides)
    if data_dir is not None:
        OmegaConf.update(cfg, "paths.data_dir", str(data_dir))
    return cfg


def smoke(experiment, data_dir, *extra):
    size = experiment.split("_")[-1].removesuffix("px")
    overrides = [f"experiment={experiment}", f"data=synthetic_cub{size}", "profile=smoke", "logger=none"]
    return compose_cub([*overrides, *extra], data_dir)


def test_there_is_one_experiment_per_table3_row():
    rows = set()
    for name in CUB_EXPERIMENTS:
        spec, _ = spec_from_config(compose_cub([f"experiment={name}"]))
        assert cub_paper_accuracy(spec.model_name, spec.size) is not None, name
        rows.add((spec.model_name, spec.size))
    assert rows == {("cnn", 224), ("st_cnn_2x", 224), ("st_cnn_2x", 448), ("st_cnn_4x", 448)}


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
def test_every_cub_option_composes_and_resolves(profile):
    for data in ("cub224", "cub448", "synthetic_cub224", "synthetic_cub448"):
        for model in ("cub_cnn", "cub_st_cnn_2x", "cub_st_cnn_4x"):
            cfg = compose_cub([f"data={data}", f"profile={profile}", f"model={model}"])
            OmegaConf.to_container(cfg, resolve=True)
            spec, settings = spec_from_config(cfg)
            assert spec.synthetic == data.startswith("synthetic") == ("synthetic" in spec.cell)
            assert spec.width == cfg.model.width and spec.crops.crop % 32 == 0
            assert len(settings.lr_milestones) == 3 or settings.lr_schedule == "cosine"


def test_the_quick_profile_says_how_it_departs_from_the_paper():
    spec, settings = spec_from_config(compose_cub(["profile=quick", "data=synthetic_cub448"]))
    assert spec.reduced_budget and spec.profile == "quick" and (spec.width, spec.part_size) == (0.25, 64)
    assert (settings.lr_schedule, settings.nesterov, settings.warmup_iterations) == ("cosine", True, 200)
    assert settings.lr_at(settings.iterations - 1) < 1e-3 * settings.lr  # decayed to about nothing
    assert compose_cub(["profile=quick"]).trainer.st_init == "cnn"
    assert compose_cub(["profile=paper"]).trainer.st_init is None


def test_the_paper_profile_is_the_papers_protocol():
    spec, settings = spec_from_config(compose_cub(["experiment=cub/4x_st_cnn_448px"]))
    assert (settings.lr, settings.lr_milestones, settings.lr_gamma) == (0.1, (10_000, 20_000, 25_000), 0.1)
    assert [settings.lr_at(i) for i in (9_999, 10_000, 20_000, 25_000)] == pytest.approx(
        [0.1, 1e-2, 1e-3, 1e-4]
    )
    assert (settings.localisation_lr_multiplier, settings.weight_decay) == (1e-4, 1e-5)
    assert (settings.iterations, spec.batch_size, spec.dropout, spec.num_parts) == (30_000, 64, 0.7, 4)
    assert (spec.crops, spec.part_size, spec.width, spec.backbone) == (
        CubCrops(512, 448),
        224,
        1.0,
        "bn_inception",
    )
    assert not spec.reduced_budget and spec.cell == "cub448-st_cnn_4x"
    cnn, _ = spec_from_config(compose_cub(["experiment=cub/cnn_224px"]))
    assert cnn.crops == CubCrops(256, 224) and cnn.model_name == "cnn"


@pytest.fixture(scope="module")
def smoke_runs(data_dir, tmp_path_factory):
    """The CNN 224px and 2xST-CNN 448px rows run on the fixture tree, in-process."""
    runs = tmp_path_factory.mktemp("runs")
    records = {}
    for experiment in ("cub/cnn_224px", "cub/2x_st_cnn_448px"):
        cfg = smoke(experiment, data_dir)
        spec, settings = spec_from_config(cfg)
        run_dir = runs / "cub" / "smoke" / spec.cell / "seed1"
        config = OmegaConf.to_container(cfg, resolve=True)
        records[experiment] = (run_cub_seed(spec, settings, run_dir, config=config, **QUIET), run_dir, spec)
    return runs, records


def test_cnn_and_st_cnn_cells_run_end_to_end(smoke_runs, data_dir):
    _, records = smoke_runs
    for experiment, (record, run_dir, spec) in records.items():
        assert record["finished"] and record["iterations"] == 4 and 0 <= record["test_error"] <= 100
        assert record["experiment"] == "cub" and record["synthetic"] and "synthetic" in record["cell"]
        assert record["metric"] == "% top-1 test error" and record["size"] == spec.size
        assert record["paper_accuracy"] == cub_paper_accuracy(spec.model_name, spec.size)
        assert record["paper_error"] == pytest.approx(100 - record["paper_accuracy"])
        assert record["pretrained"].startswith("from scratch") and record["test_set"]["size"] == 9
        assert record["world_size"] == 1 and record["batch_size"] == 4
        assert (run_dir / "model.pt").exists()
        pictures = list((run_dir / "pictures").glob("*.png"))
        assert len(pictures) == (0 if spec.model == "cnn" else 1), experiment
    record, run_dir, spec = records["cub/2x_st_cnn_448px"]
    assert (record["input_px"], record["part_px"], record["parts"]) == (128, 64, 2)
    assert record["transform"] == "attention" and record["model_info"]["tiling"] == [[-0.5, 0.0], [0.5, 0.0]]
    # The saved model scores what the record says.
    model = load_trained_cub_model(run_dir)
    test = CubDataset(read_cub_index(data_dir / "synthetic-cub" / "CUB_200_2011"), "test", spec.crops)
    images, labels = zip(*(test[k] for k in range(len(test))), strict=True)
    with torch.no_grad():
        wrong = (model(torch.stack(images)).argmax(1) != torch.stack(labels)).sum().item()
    assert 100.0 * wrong / len(test) == pytest.approx(record["test_error"])


def test_an_interrupted_cub_run_resumes_to_the_same_final_state(data_dir, tmp_path):
    cfg = smoke("cub/2x_st_cnn_224px", data_dir, "trainer.iterations=6")
    spec, settings = spec_from_config(cfg)
    straight = run_cub_seed(spec, settings, tmp_path / "straight", **QUIET)
    stopped = run_cub_seed(spec, replace(settings, stop_after=3), tmp_path / "resumed", **QUIET)
    assert stopped == {"finished": False, "iterations": 3, "stopped_by": None}
    resumed = run_cub_seed(spec, settings, tmp_path / "resumed", **QUIET)
    assert resumed["test_error"] == straight["test_error"] and resumed["history"] == straight["history"]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_table3_writer_shows_accuracy_beside_the_paper(smoke_runs, tmp_path):
    runs, _ = smoke_runs
    out = tmp_path / "results"
    assert table_main(["--experiment", "cub", "--runs", str(runs / "cub"), "--out", str(out)]) == 0
    text = (out / "cub_table3_smoke_synthetic.md").read_text()
    assert "% top-1 accuracy" in text and "SYNTHETIC DATA" in text and "REDUCED BUDGET" in text
    assert "FROM SCRATCH" in text and "| Simon et al. | - | 81.0 |" in text
    assert "| 2xST-CNN 224px | not run | 83.1 |" in text and "| 4xST-CNN 448px | not run | 84.1 |" in text
    cnn = json.loads((runs / "cub" / "smoke" / "synthetic-cub224-cnn" / "seed1" / "record.json").read_text())
    assert f"| CNN 224px | {100 - cnn['test_error']:.2f} | 82.3 |" in text
    assert not (out / "cub_table3_smoke.md").exists()  # synthetic runs never land in the real table


def test_under_st_init_cnn_an_st_cnn_starts_from_the_cnn_run_of_its_seed(smoke_runs, data_dir, tmp_path):
    runs, records = smoke_runs
    _, cnn_dir, _ = records["cub/cnn_224px"]
    cfg = smoke("cub/2x_st_cnn_448px", data_dir, "trainer.st_init=cnn")
    spec, settings = spec_from_config(cfg)
    st_dir = runs / "cub" / "smoke" / spec.cell / "seed1"
    assert initial_weights(cfg, spec, st_dir) == str(cnn_dir / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"seed2.*does not exist; fix: run that CNN first"):
        initial_weights(cfg, replace(spec, seed=2), st_dir.with_name("seed2"))
    assert initial_weights(cfg, replace(spec, weights="own.pth"), st_dir) == "own.pth"  # given wins
    cnn_cfg = smoke("cub/cnn_224px", data_dir, "trainer.st_init=cnn")
    assert initial_weights(cnn_cfg, spec_from_config(cnn_cfg)[0], cnn_dir) is None  # the CNN itself
    with pytest.raises(ValueError, match=r"trainer\.st_init='imagenet'"):
        initial_weights(smoke("cub/2x_st_cnn_448px", data_dir, "trainer.st_init=imagenet"), spec, st_dir)

    # The run says where it started, and the table marks it.
    own = tmp_path / "cub" / "smoke" / spec.cell / "seed1"
    record = run_cub_seed(replace(spec, weights=str(cnn_dir / "model.pt")), settings, own, **QUIET)
    assert record["pretrained"]["source"] == "cub_cnn" and record["pretrained"]["loaded"] > 0
    cnn_copy = tmp_path / "cub" / "smoke" / "synthetic-cub224-cnn" / "seed1"
    cnn_copy.mkdir(parents=True)
    (cnn_copy / "record.json").write_text((cnn_dir / "record.json").read_text())
    out = tmp_path / "results"
    assert table_main(["--experiment", "cub", "--runs", str(tmp_path / "cub"), "--out", str(out)]) == 0
    text = (out / "cub_table3_smoke_synthetic.md").read_text()
    assert "STARTED FROM THE CNN" in text and "| 2xST-CNN 448px |" in text
    assert next(line for line in text.splitlines() if line.startswith("| 2xST-CNN 448px")).endswith(
        "| the 224px CNN's |"
    )


def test_the_control_a_cnn_trained_on_from_the_cnn_is_a_row_of_its_own(smoke_runs, data_dir, tmp_path):
    _, records = smoke_runs
    cnn, cnn_dir, spec = records["cub/cnn_224px"]
    settings = spec_from_config(smoke("cub/cnn_224px", data_dir))[1]
    # What `task_name=cub_control model.weights=<the CNN's run>` trains: the CNN on from its own weights.
    control_dir = tmp_path / "cub_control" / "smoke" / spec.cell / "seed1"
    control = run_cub_seed(replace(spec, weights=str(cnn_dir / "model.pt")), settings, control_dir, **QUIET)
    assert control["pretrained"]["source"] == "cub_cnn"
    cnn_copy = tmp_path / "cub" / "smoke" / spec.cell / "seed1"
    cnn_copy.mkdir(parents=True)
    (cnn_copy / "record.json").write_text((cnn_dir / "record.json").read_text())
    out = tmp_path / "results"
    assert table_main(["--experiment", "cub", "--runs", str(tmp_path), "--out", str(out)]) == 0
    text = (out / "cub_table3_smoke_synthetic.md").read_text()
    lines = text.splitlines()
    row = lines.index(next(line for line in lines if line.startswith("| CNN 224px |")))
    assert (
        lines[row]
        == f"| CNN 224px | {100 - cnn['test_error']:.2f} | 82.3 | {cnn['param_count']:,} | from scratch |"
    )
    assert lines[row + 1] == (  # right below the CNN, never averaged with it, no paper number
        f"| CNN 224px, 4 more iterations (control) | {100 - control['test_error']:.2f} | - | "
        f"{control['param_count']:,} | the 224px CNN's |"
    )
    assert "- Runs: 2 (1 seed(s) per cell)" in text
    rows = (out / "cub_table3_smoke_synthetic.csv").read_text().splitlines()
    assert [r.split(",")[5] for r in rows[1:]] == ["CNN 224px", "CNN 224px (control)"]


def test_box_coverage_counts_the_object_pixels_inside_the_parts():
    objects = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 4.0]])
    parts = torch.tensor(
        [[[0.0, 0.0, 2.0, 8.0], [0.0, 0.0, 8.0, 2.0]], [[4.0, 0.0, 8.0, 8.0], [7.0, 7.0, 8.0, 8.0]]]
    )
    each, union = box_coverage(objects, parts, 8)
    # Object 0 (16 px): the left strip covers 8, the top strip 8, together 12. Object 1 (8 px): 4, 0, 4.
    assert each.tolist() == [[0.5, 0.5], [0.5, 0.0]] and union.tolist() == [0.75, 0.5]


def test_object_boxes_follow_the_test_views_resize_and_central_crop(tmp_path):
    root = write_cub_tree(tmp_path, 2, 1, image_size=(40, 56), seed=4)
    index = read_cub_index(root)
    test = CubDataset(index, "test", CubCrops(37, 32))
    boxes = object_boxes_in_crops(test)
    row = test.row(0)
    with Image.open(index.image_path(row)) as image:
        width, height = image.size
    scale = 37 / min(width, height)
    new_w, new_h = (37, int(37 * height / width)) if width <= height else (int(37 * width / height), 37)
    x, y, w, h = index.boxes[row].tolist()
    left, top = (new_w - 32) // 2, (new_h - 32) // 2
    expected = [x * scale - left, y * scale - top, (x + w) * scale - left, (y + h) * scale - top]
    assert boxes[0].tolist() == pytest.approx([min(max(v, 0), 32) for v in expected], abs=1e-4)


def test_cub_parts_reports_where_the_parts_go(smoke_runs, data_dir, tmp_path, capsys):
    _, records = smoke_runs
    _, st_dir, spec = records["cub/2x_st_cnn_448px"]
    model = load_trained_cub_model(st_dir)
    test = CubDataset(read_cub_index(data_dir / "synthetic-cub" / "CUB_200_2011"), "test", spec.crops)
    placement = part_placement(model, test, batch_size=4)
    assert placement.part_centres.shape == (9, 2, 2) and placement.coverage.shape == (9, 2)
    # 4 smoke steps at the smoke lr barely move the regression layer: the parts sit near their tiling.
    tiling = (torch.tensor([[-0.5, 0.0], [0.5, 0.0]]) + 1) * spec.crops.crop / 2
    assert (placement.part_centres - tiling).abs().max() < 0.1 * spec.crops.crop
    assert ((placement.union_coverage >= 0) & (placement.union_coverage <= 1)).all()
    out = tmp_path / "parts.md"
    code = cub_parts_main([str(st_dir), "--data-dir", str(data_dir), "--out", str(out)])
    assert code == 0 and "| all parts |" in out.read_text() and "initial tiling" in out.read_text()
    _, cnn_dir, _ = records["cub/cnn_224px"]
    assert cub_parts_main([str(cnn_dir), "--data-dir", str(data_dir)]) == 1
    assert "not a CUB ST-CNN run" in capsys.readouterr().err


def test_a_missing_set_names_the_make_target_and_an_mnist_set_is_refused(tmp_path):
    cfg = compose_cub(["data=synthetic_cub224", "profile=smoke", "logger=none"], tmp_path)
    spec, settings = spec_from_config(cfg)
    with pytest.raises(DataError, match="make data-cub-synthetic"):
        run_cub_seed(spec, settings, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="data=rts is not a CUB set"):
        spec_from_config(compose_cub(["data=rts"]))


# --- data parallel ---------------------------------------------------------------------------------------------


def test_a_stop_agreed_by_the_processes_ends_every_one_after_the_same_step(data_dir, tmp_path, monkeypatch):
    """A process that received no signal itself stops when the others' agreement says so, with a
    checkpoint (the loop asks the learner before every step)."""
    asked = []

    def agree(self, received):
        asked.append(received)
        return "SIGTERM" if len(asked) == 3 else received

    monkeypatch.setattr(LoaderLearner, "agree_to_stop", agree)
    spec, settings = spec_from_config(smoke("cub/cnn_224px", data_dir))
    outcome = run_cub_seed(spec, settings, tmp_path, **QUIET)
    assert outcome == {"finished": False, "iterations": 2, "stopped_by": "SIGTERM"}
    assert asked == [None, None, None] and (tmp_path / "checkpoint.pt").exists()


def test_the_process_group_is_read_from_torchrun_or_slurm(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS"):
        monkeypatch.setenv(key, "")  # recorded: restored (or removed) after the test
        monkeypatch.delenv(key)
    assert distributed_environment() is None and init_distributed() is None  # one process
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_environment() == (5, 8, 1)
    monkeypatch.delenv("WORLD_SIZE")
    for key, value in {
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "4242",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.7")
    assert distributed_environment() == (9, 16, 1)
    assert os.environ["MASTER_ADDR"] == "10.0.0.7" and os.environ["MASTER_PORT"] == str(20_000 + 4242)
    assert (
        DistContext(0, 2, 0, "nccl").device("auto") == "cuda:0"
        and DistContext(1, 2, 1, "gloo").is_writer is False
    )


def _gradients(tree: str, world: int, rank: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step's gradients of a 2xST-CNN on the second global batch of 4 (this rank's share of it)."""
    dataset = CubDataset(read_cub_index(Path(tree)), "train", CubCrops(73, 64))
    stream = CubStream(dataset, 4 // world, seed=5, rank=rank, world_size=world)
    torch.manual_seed(3)
    model, _ = build_cub_model(
        "st_cnn", width=0.0625, input_size=64, part_size=64, num_parts=2, num_classes=3
    )
    # Running BN statistics and no dropout: each image's loss does not depend on the rest of its batch.
    model.eval()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    stream.next_batch()
    images, labels = stream.next_batch()
    F.cross_entropy(net(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, labels


def _ddp_worker(rank: int, world: int, tree: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        grads, labels = _gradients(tree, world, rank)
        every = [None] * world
        dist.all_gather_object(every, labels)
        if rank == 0:
            torch.save({"grads": grads, "labels": torch.cat(every)}, f"{folder}/ddp.pt")
    finally:
        leave_distributed()
    assert not dist.is_initialized()


def test_two_gloo_processes_give_one_processs_gradients_on_the_same_global_batch(data_dir, tmp_path):
    tree = str(data_dir / "synthetic-cub" / "CUB_200_2011")
    mp.spawn(_ddp_worker, args=(2, tree, str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    grads, labels = _gradients(tree, 1, 0)
    assert sorted(ddp["labels"].tolist()) == sorted(labels.tolist())  # the same 4 images, split 2 + 2
    assert grads.keys() == ddp["grads"].keys()
    for name, grad in grads.items():  # equal up to float rounding (summed in another order)
        assert (ddp["grads"][name] - grad).abs().max() <= 1e-5 * grad.abs().max() + 1e-9, name
    assert grads["transformer.localisation.head.bias"].abs().sum() > 0  # the localisation net learns too


def test_a_two_process_4x_st_cnn_run_finishes_and_resumes(data_dir, tmp_path):
    """``make reproduce-cub NPROC=2``'s command on the fixture tree: one torchrun launch of a sweep whose
    seed-1 jobs first stop after 2 of 4 iterations, then resume the same run folder to the end; seed 2's
    folder is owned by another process, so every rank skips its jobs alike (no rank waits for another)."""
    env = {**ENV, "STN_DATA": str(data_dir), "STN_RUNS": str(tmp_path / "runs")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "experiments.cub", "-m", "experiment=cub/4x_st_cnn_448px", "data=synthetic_cub448",
        "profile=smoke", "logger=none", "trainer.num_threads=1", "trainer.stop_after=2,null", "seed=1,2",
    ]  # fmt: skip
    cell = tmp_path / "runs" / "cub" / "smoke" / "synthetic-cub448-st_cnn_4x"
    with RunLock(cell / "seed2", log=lambda s: None):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 2 * 2 and all(f"pid {os.getpid()}" in line for line in skipped)  # 2 jobs x 2 ranks
    assert not (cell / "seed2" / "checkpoint.pt").exists()
    # Rank 0 alone speaks (and writes): each line once.
    assert done.stdout.count("stopped after stop_after=2 iterations at iteration 2 of 4") == 1
    assert done.stdout.count("resuming from") == 1 and "at iteration 2" in done.stdout
    assert done.stdout.count("2 processes x 2 images") == 2
    run_dir = cell / "seed1"
    record = json.loads((run_dir / "record.json").read_text())
    assert record["finished"] and record["iterations"] == 4 and record["world_size"] == 2
    assert record["batch_size"] == 4 and record["batch_per_process"] == 2
    assert [h["iteration"] for h in record["history"] if "test_error" in h] == [2, 4]  # the evaluations
    assert len(list((run_dir / "pictures").glob("*.png"))) == 1
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["learner"]["rng"]) == 2 and checkpoint["learner"]["world_size"] == 2


def test_a_data_error_on_one_rank_ends_the_job_with_one_line_from_rank_0(tmp_path):
    """Issue 49: a corrupt image read by rank 1 only. Before, rank 1 printed its line, rank 0 a 60-line
    traceback about the lost gloo connection; now rank 0 alone speaks, naming the rank, the file and the
    fix (torchrun's own summary of exit codes still follows: it is torchrun's)."""
    data = tmp_path / "data"
    write_cub_tree(data / "synthetic-cub", 6, 3, image_size=(40, 56), seed=3)
    root = data / "synthetic-cub" / "CUB_200_2011"
    first = root.joinpath("images.txt").read_text().splitlines()[0].split()[1]
    (root / "images" / first).write_bytes(b"not a jpeg")  # image 1: in rank 1's share of the first batch
    env = {**ENV, "STN_DATA": str(data), "STN_RUNS": str(tmp_path / "runs")}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "experiments.cub", "experiment=cub/2x_st_cnn_448px", "data=synthetic_cub448",
        "profile=smoke", "logger=none", "trainer.num_threads=1", "seed=1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    workers = "\n".join(
        line
        for line in (done.stdout + done.stderr).splitlines()
        if not line.startswith(("W1", "E1", "I1"))  # torchrun's own log lines
    )
    ours = workers.split("Traceback (most recent call last)")[0]  # torchrun's summary comes last
    errors = [line for line in ours.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, ours
    assert errors[0].startswith("error: rank 1 of 2 failed: CUB image ") and first.split("/")[1] in errors[0]
    assert "cannot be decoded" in errors[0] and "fix:" in errors[0] and "relaunch" in errors[0]
    assert "[rank0]" not in workers and "[rank1]" not in workers and "closed by peer" not in ours
    run_dir = tmp_path / "runs" / "cub" / "smoke" / "synthetic-cub448-st_cnn_2x" / "seed1"
    assert not list(run_dir.glob("rank*-error.txt"))  # read and reported: gone


def test_rank_0_names_a_peers_bug_by_its_note_and_ignores_a_former_launchs(tmp_path, monkeypatch):
    from experiments import rank_failures

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:5000")
    # no note: a peer that died without a word (killed for memory, say), or rank 0's own error
    assert "ended without a report" in rank_failures.peer_failure_line(tmp_path, lost, wait_s=0.2)
    assert rank_failures.peer_failure_line(tmp_path, ZeroDivisionError("x"), wait_s=0.2) is None
    stale = tmp_path / "rank2-error.txt"
    stale.write_text("an old launch's note\n")
    os.utime(stale, (1.0, 1.0))
    assert rank_failures.peer_failure_line(tmp_path, None) is None
    monkeypatch.setenv("RANK", "3")
    try:
        raise KeyError("boxes")
    except KeyError:
        rank_failures.note_failure(tmp_path)
    monkeypatch.setenv("RANK", "0")
    line = rank_failures.peer_failure_line(tmp_path, lost)
    assert line.startswith("rank 3 of 4 failed: KeyError: 'boxes' (a bug: its traceback is in ")
    assert (tmp_path / "rank3-error.txt").read_text().startswith("Traceback")  # kept for the reader


# --- SLURM -----------------------------------------------------------------------------------------------------


def test_the_slurm_launcher_config_submits_what_it_says(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "cub",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.timeout_min=600",
            ],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["gpus_per_node"], launcher["partition"], launcher["timeout_min"]) == (8, "gpu", 600)
    # What the launcher hands submitit (hydra_submitit_launcher's own mapping), without a cluster.
    launcher.pop("_target_")
    launcher["tasks_per_node"] = launcher["gpus_per_node"]
    launcher["name"] = "cub"
    init_keys = {"max_num_timeout", "submitit_folder"}
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=3)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in launcher.items() if k not in init_keys}
    )
    script = executor._executor._make_submission_file_text("python -m experiments.cub", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=600",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --nodes=1",
        "#SBATCH --cpus-per-task=10",
    ):
        assert line in script, line


@pytest.mark.slow
def test_a_two_process_run_stopped_and_relaunched_ends_as_an_uninterrupted_one(data_dir, tmp_path):
    """Exact data-parallel resume in fresh processes: every rank's RNG, the shared stream position, rank 0's
    buffers (CPU, gloo)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "experiments.cub", "experiment=cub/2x_st_cnn_224px", "data=synthetic_cub224",
        "profile=smoke", "logger=none", "trainer.num_threads=1", "trainer.iterations=6",
    ]  # fmt: skip
    weights = []
    for name, stops in (("straight", []), ("resumed", ["trainer.stop_after=3"])):
        env = {**ENV, "STN_DATA": str(data_dir), "STN_RUNS": str(tmp_path / name)}
        for extra in ([*stops], []) if stops else ([],):
            done = subprocess.run(
                [*command, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
            )
            assert done.returncode == 0, done.stderr[-3000:]
        run_dir = tmp_path / name / "cub" / "smoke" / "synthetic-cub224-st_cnn_2x" / "seed1"
        weights.append(torch.load(run_dir / "model.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
