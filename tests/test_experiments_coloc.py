"""Co-localisation (Table 5): the loss, the metric and the window geometry against hand-computed cases; every
config composes; a smoke run (embedding + co-localisation) on synthetic digits leaves a record, is
deterministic by seed and resumes exactly; the embedding is trained once and waited for; the table."""

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from experiments.coloc import leave_launch_overrides, specs_from_config
from stn_analysis.bookkeeping.park import launch_command
from stn_analysis.diagnostics.coloc_boxes import main as boxes_main
from stn_analysis.diagnostics.coloc_landscape import SCALES as LANDSCAPE_SCALES
from stn_analysis.diagnostics.coloc_landscape import main as landscape_main
from stn_analysis.records import collect_records
from stn_analysis.tables.cli import main as table_main
from stn_analysis.tables.coloc import coloc_rows, write_coloc_tables
from stn_repro.data.plain import PlainStream
from stn_repro.models.coloc import (
    BoundedAttention,
    CnnEmbedding,
    attention_boxes,
    box_errors,
    box_iou,
    colocalisation_transformer,
)
from stn_repro.models.mnist import build_mnist_model
from stn_repro.paper import TABLE5_LOCALISED, coloc_paper_localised, coloc_paper_text
from stn_repro.tasks.coloc.embedding import ensure_embedding, load_embedding
from stn_repro.tasks.coloc.learner import (
    ColocLearner,
    box_centred_windows,
    colocalisation_hinge,
    hinge_at_windows,
    localisation_error,
    predicted_boxes,
    random_crops,
    random_windows,
)
from stn_repro.tasks.coloc.pictures import BOX_HISTORY_NAME, boxes_figure, update_box_history
from stn_repro.tasks.coloc.task import load_coloc_data, load_trained_transformer, run_coloc_seed
from stn_repro.training.records import write_record
from stn_repro.training.run_folder import RunLock
from stn_repro.training.settings import TrainSettings
from stn_repro.transformers import get_transform, sample

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUIET = {"log": lambda s: None}
# Small and fast: a narrow embedding CNN, 10 images per class, synthetic digits.
SMOKE = [
    "profile=smoke",
    "data.source=synthetic",
    "logger=none",
    "embedding=plain",
    "embedding.param_budget=5000",
    "coloc.num_images=10",
]


def compose_coloc(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("coloc", overrides=overrides)


def smoke_specs(tmp_path, *extra):
    cfg = compose_coloc([*SMOKE, *extra])
    OmegaConf.update(cfg, "paths.runs_dir", str(tmp_path))
    return specs_from_config(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder whose smoke embedding is trained once for the whole module."""
    root = tmp_path_factory.mktemp("coloc-runs")
    _, _, embedding_spec, embedding_settings, embedding_dir = smoke_specs(root)
    record = ensure_embedding(embedding_spec, embedding_settings, embedding_dir, **QUIET)
    assert record["finished"] and record["experiment"] == "coloc_embedding"
    return root


def cell_dir(runs, cell):
    """Where the sweep would put a smoke run's folder: the table test reads the records found there."""
    return runs / "coloc" / "smoke" / cell / "seed1"


def run_smoke(runs, run_dir, *extra, settings_change=None, log=None):
    spec, settings, embedding_spec, embedding_settings, embedding_dir = smoke_specs(runs, *extra)
    if settings_change:
        settings = replace(settings, **settings_change)
    return run_coloc_seed(
        spec,
        settings,
        run_dir,
        embedding_spec=embedding_spec,
        embedding_settings=embedding_settings,
        embedding_dir=embedding_dir,
        log=log or (lambda s: None),
    )


# --- the loss, the metric, the geometry ------------------------------------------------------------------------


def test_hinge_loss_matches_a_hand_computed_case():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -3.0]])
    # ||z_n - r_n||^2 = 1, 0, 25; ||z_n - z_m||^2: d01 = 1, d02 = 4, d12 = 5. Ordered pairs (n, m):
    # (0,1) 1-1+1 = 1, (0,2) 4-1+1 = 4, (1,0) 1-0+1 = 2, (1,2) 5-0+1 = 6, (2,0) 4-25+1 < 0 -> 0, (2,1) -> 0.
    assert colocalisation_hinge(z, r).item() == pytest.approx(13 / 6)
    assert colocalisation_hinge(z, r, margin=0.0).item() == pytest.approx((0 + 3 + 1 + 5) / 6)
    # Every term clipped: the crops are far from everything.
    assert colocalisation_hinge(z, r + 100.0).item() == 0.0
    with pytest.raises(ValueError, match="at least two"):
        colocalisation_hinge(z[:1], r[:1])


def test_hinge_loss_pulls_the_pairs_together_and_leaves_the_crops():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    r = torch.tensor([[0.0, 3.0], [1.0, 3.0]])
    # Pair terms: ||z0 - z1||^2 - ||z_n - r_n||^2 + 1 = 1 - 9 + 1 < 0: no gradient; nearer crops give one.
    colocalisation_hinge(z, r).backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    z.grad = None
    colocalisation_hinge(z, torch.tensor([[0.0, 0.5], [1.0, 0.5]])).backward()
    assert z.grad[0, 0] < 0 < z.grad[1, 0]  # descent moves z0 right and z1 left: towards each other


def test_iou_of_hand_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    assert box_iou(a, b).tolist() == pytest.approx([1 / 7, 4 / 16, 0.0, 1.0])
    assert box_iou(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]])).item() == 0.0


def test_attention_window_as_a_pixel_box_by_hand():
    params = torch.tensor([[1 / 3, 0.0, 0.0], [0.5, 0.5, -0.25], [-1 / 3, 0.0, 0.0], [1.0, 0.0, 0.0]])
    boxes = attention_boxes(params, image_size=84)
    # align_corners=False: x in [tx - s, tx + s] normalised, pixel position (x + 1) * 84 / 2.
    assert boxes[0].tolist() == pytest.approx([28.0, 28.0, 56.0, 56.0])
    assert boxes[1].tolist() == pytest.approx([42.0, 10.5, 84.0, 52.5])
    assert boxes[2].tolist() == pytest.approx([28.0, 28.0, 56.0, 56.0])  # a mirrored window: the same box
    assert boxes[3].tolist() == pytest.approx([0.0, 0.0, 84.0, 84.0])  # the identity sees the whole image
    # align_corners=True: output pixel centres at +-1 = input centres 0 and 83, 83/27 px apart; the box is
    # half an output pixel wider on each side: [0.5 - 83/54, 83.5 + 83/54].
    aligned = attention_boxes(params[3:], image_size=84, output_size=28, align_corners=True)
    assert aligned[0].tolist() == pytest.approx(
        [0.5 - 83 / 54, 0.5 - 83 / 54, 83.5 + 83 / 54, 83.5 + 83 / 54]
    )


def test_the_box_is_what_the_sampler_reads():
    """A 28 px window whose box lies on whole pixels samples exactly those pixels (align_corners=False)."""
    image = torch.rand(1, 1, 84, 84, generator=torch.Generator().manual_seed(0))
    x0, y0, s = 10, 40, 1 / 3
    params = torch.tensor([[s, x0 / 42 - 1 + s, y0 / 42 - 1 + s]])
    assert attention_boxes(params)[0].tolist() == pytest.approx([x0, y0, x0 + 28, y0 + 28])
    family = get_transform("attention")
    out = sample(image, family.grid(params, (28, 28)), align_corners=family.align_corners)
    assert torch.allclose(out, image[..., y0 : y0 + 28, x0 : x0 + 28], atol=1e-5)


def test_random_crops_are_crops_at_the_drawn_offsets():
    images = torch.arange(2 * 84 * 84, dtype=torch.float32).view(2, 1, 84, 84)
    crops, offsets = random_crops(images, 28, torch.Generator().manual_seed(3))
    assert crops.shape == (2, 1, 28, 28) and offsets.shape == (2, 2)
    for i, (x0, y0) in enumerate(offsets.tolist()):
        assert 0 <= x0 <= 56 and 0 <= y0 <= 56
        assert torch.equal(crops[i], images[i, :, y0 : y0 + 28, x0 : x0 + 28])
    again, _ = random_crops(images, 28, torch.Generator().manual_seed(3))
    assert torch.equal(crops, again)


def test_random_windows_are_windows_of_the_given_scale_inside_the_image():
    images = torch.arange(3 * 84 * 84, dtype=torch.float32).view(3, 1, 84, 84)
    scales = torch.tensor([1 / 3, 0.5, 1.0])
    views = random_windows(images, scales, 28, torch.Generator().manual_seed(5))
    assert views.shape == (3, 1, 28, 28)
    # The same draw by hand: centres uniform in [-(1 - s), 1 - s], so every window lies inside the image.
    generator = torch.Generator().manual_seed(5)
    centres = (2 * torch.rand(3, 2, generator=generator) - 1) * (1 - scales)[:, None]
    params = torch.cat([scales[:, None], centres], 1)
    boxes = attention_boxes(params, 84)
    assert (boxes >= -1e-4).all() and (boxes <= 84 + 1e-4).all()
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], 84 * scales, rtol=0, atol=1e-4)
    family = get_transform("attention")
    expected = sample(images, family.grid(params, (28, 28)), align_corners=family.align_corners)
    assert torch.equal(views, expected)
    # s = 1 leaves no room: the whole image, shrunk.
    assert torch.equal(boxes[2], torch.tensor([0.0, 0.0, 84.0, 84.0]))
    with pytest.raises(ValueError, match="one scale per image"):
        random_windows(images, scales[:2], 28, torch.Generator())


def test_the_embedding_is_the_cnns_hidden_layers_and_logits_and_is_frozen():
    torch.manual_seed(0)
    model, info = build_mnist_model("cnn", (1, 28, 28), param_budget=5000)
    embedding = CnnEmbedding(model.classifier)
    w1, w2 = info.widths
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    e = embedding(x)
    assert e.shape == (3, w1 * 10 * 10 + w2 * 2 * 2 + 10)
    assert torch.allclose(e[:, -10:], model(x))  # the logits last
    assert not any(p.requires_grad for p in embedding.parameters())
    embedding.train()
    assert not embedding.training
    e.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the transformer's output


def test_the_localisation_net_is_the_papers_and_starts_at_the_chosen_window():
    transformer = colocalisation_transformer(init_scale=1 / 3, init_translation=(0.1, -0.2))
    convs = [m for m in transformer.localisation if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in transformer.localisation if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(8, (9, 9), (4, 4))]
    assert [lin.out_features for lin in linears] == [8, 8, 3] and linears[0].in_features == 8 * 9 * 9
    out = transformer(torch.rand(2, 1, 84, 84))
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(transformer.last_params, torch.tensor([[1 / 3, 0.1, -0.2]] * 2))


def test_bounded_attention_starts_where_asked_and_keeps_the_window_inside():
    transformer = colocalisation_transformer(0.95, (0.0, 0.0), scale_range=(0.25, 1.0), inside=True)
    assert isinstance(transformer.localisation[-1], BoundedAttention)
    transformer(torch.rand(2, 1, 84, 84))
    assert torch.allclose(transformer.last_params, torch.tensor([[0.95, 0.0, 0.0]] * 2), atol=1e-6)
    shifted = colocalisation_transformer(0.4, (0.3, -0.5), scale_range=(0.25, 1.0), inside=True)
    shifted(torch.rand(1, 1, 84, 84))
    assert torch.allclose(shifted.last_params, torch.tensor([[0.4, 0.3, -0.5]]), atol=1e-6)
    bounds = BoundedAttention((0.25, 1.0), inside=True)
    params = bounds(torch.tensor([[-50.0, 50.0, -50.0], [50.0, 3.0, 0.0]]))
    boxes = attention_boxes(params)
    assert params[:, 0].tolist() == pytest.approx([0.25, 1.0])
    assert torch.all(boxes >= 0) and torch.all(boxes <= 84)  # however far the raw outputs go
    fixed = BoundedAttention((1 / 3, 1 / 3), inside=True)
    assert fixed(torch.tensor([[9.0, 0.0, 0.0]]))[0, 0].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="strictly inside"):
        colocalisation_transformer(1.0, scale_range=(0.25, 1.0), inside=True)


def test_embedding_norms():
    torch.manual_seed(0)
    model, _ = build_mnist_model("cnn", (1, 28, 28), param_budget=5000)
    x = torch.rand(2, 1, 28, 28)
    raw = CnnEmbedding(model.classifier)(x)
    unit = CnnEmbedding(model.classifier, normalise="unit")(x)
    per_layer = CnnEmbedding(model.classifier, normalise="per_layer")(x)
    assert torch.allclose(unit, raw / raw.norm(dim=1, keepdim=True))
    assert torch.allclose(per_layer.norm(dim=1), torch.ones(2)) and torch.allclose(
        unit.norm(dim=1), torch.ones(2)
    )
    with pytest.raises(ValueError, match="normalise"):
        CnnEmbedding(model.classifier, normalise="l3")


def test_plain_stream_is_seeded_and_resumes():
    images = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
    labels = torch.arange(10)
    a, b = PlainStream(images, labels, 4, seed=5), PlainStream(images, labels, 4, seed=5)
    first = [a.next_batch()[1].tolist() for _ in range(3)]
    assert first == [b.next_batch()[1].tolist() for _ in range(3)]
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))  # one epoch, then the next
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(2)]
    c = PlainStream(images, labels, 4, seed=5)
    c.load_state_dict(state)
    for (x, y), (x2, y2) in zip(expected, [c.next_batch() for _ in range(2)], strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[0, 0], images[y[0]].float() / 255)


def test_paper_numbers_are_the_specs():
    assert TABLE5_LOCALISED == {"coloc_t": (100.0, 100.0), "coloc_tc": (75.0, 93.0)}
    assert coloc_paper_localised("coloc_tc") == {"low": 75.0, "high": 93.0}
    assert (coloc_paper_text("coloc_t"), coloc_paper_text("coloc_tc")) == ("100", "75-93")


# --- configs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["coloc_t", "coloc_tc"])
@pytest.mark.parametrize("profile", ["paper", "fast", "quick", "smoke"])
@pytest.mark.parametrize("source", ["mnist", "synthetic"])
@pytest.mark.parametrize("embedding", ["table1", "plain"])
def test_every_coloc_config_composes_and_resolves(data, profile, source, embedding, tmp_path):
    overrides = [f"data={data}", f"profile={profile}", f"data.source={source}", "digit=7"]
    cfg = compose_coloc([*overrides, f"embedding={embedding}"])
    OmegaConf.to_container(cfg, resolve=True)
    spec, _, embedding_spec, embedding_settings, embedding_dir = specs_from_config(cfg)
    assert spec.data == data and spec.digit == 7 and spec.synthetic == (source == "synthetic")
    assert cfg.cell == spec.cell and ("synthetic" in spec.cell) == spec.synthetic
    assert spec.batch_size <= spec.num_images == 100
    if embedding == "table1":  # a finished Table 1 CNN run: nothing to train
        assert embedding_spec is None and embedding_settings is None
        assert embedding_dir.parts[-3:] == ("mnist_fast", "p-cnn-none", "seed1")
        return
    assert embedding_dir.parts[-4:] == ("embedding", cfg.trainer.profile, source, "seed1")
    assert embedding_settings.iterations == cfg.trainer.embedding.iterations
    assert embedding_spec.batch_size == cfg.trainer.embedding.batch_size
    assert spec.batch_size <= spec.num_images == 100


def test_paper_profile_is_what_the_config_says():
    spec, settings, embedding_spec, embedding_settings, _ = specs_from_config(
        compose_coloc(["embedding=plain"])
    )
    # The embedding: the Sect. 2 protocol (150k x 256, SGD 0.01, /10 every 50k); the CNN of Table 1's budget.
    assert (embedding_settings.iterations, embedding_spec.batch_size, embedding_settings.lr) == (
        150_000,
        256,
        0.01,
    )
    assert embedding_settings.lr_step_every == 50_000 and embedding_spec.param_budget == 400_000
    # Co-localisation: all 100 images every step, Adam at 0.01, a constant lr, starting next to the identity
    # attention, the paper's plain (unbounded) attention, e() at unit length.
    assert (spec.num_images, spec.batch_size, spec.optimizer, spec.init_scale) == (100, 100, "adam", 0.95)
    assert (spec.scale_range, spec.inside, spec.embedding_norm) == (None, False, "unit")
    assert settings.lr == 0.01 and (spec.extra_starts, spec.oracle_steps, spec.image_offset) == ((), 0, 0)
    assert settings.lr_step_every >= settings.iterations and not spec.reduced_budget
    assert (spec.margin, spec.crop_size) == (1.0, 28)


def test_a_wrong_set_or_digit_is_refused_clearly():
    with pytest.raises(ValueError, match="not a co-localisation set"):
        specs_from_config(compose_coloc(["data=rts"]))
    with pytest.raises(ValueError, match="digit class 0-9"):
        specs_from_config(compose_coloc(["digit=10"]))
    with pytest.raises(ValueError, match="batch_size"):
        specs_from_config(compose_coloc(["trainer.batch_size=101"]))
    with pytest.raises(ValueError, match="strictly inside"):
        specs_from_config(compose_coloc(["coloc.init_scale=1.0", "coloc.scale_range=[0.25,1.0]"]))
    with pytest.raises(ValueError, match="start_steps"):
        specs_from_config(compose_coloc(["coloc.extra_starts=[[0.5,0.0,0.0]]"]))


# --- runs ------------------------------------------------------------------------------------------------------


def test_the_images_are_the_first_of_their_class(tmp_path):
    spec, *_ = smoke_specs(tmp_path, "data=coloc_tc", "digit=4")
    data = load_coloc_data(spec)
    assert data.images.shape == (10, 1, 84, 84) and data.images.dtype == torch.uint8
    assert data.boxes.shape == (10, 4) and torch.all(data.boxes[:, 2:] - data.boxes[:, :2] == 28)
    assert torch.all(data.indices[1:] > data.indices[:-1])  # in the set's order
    assert load_coloc_data(spec).checksum == data.checksum  # fixed


def test_a_smoke_run_trains_the_embedding_once_and_leaves_a_record(runs):
    logs = []
    run_dir = cell_dir(runs, "coloc_t-synthetic-digit2")
    record = run_smoke(runs, run_dir, "digit=2", log=logs.append)
    assert any("already finished" in line and "embedding" in line for line in logs)  # reused, not retrained
    assert (
        record["finished"]
        and record["experiment"] == "coloc"
        and record["cell"] == "coloc_t-synthetic-digit2"
    )
    assert record["metric"] == "% not localised (IoU <= 0.5)" and 0 <= record["test_error"] <= 100
    assert record["iterations"] == 6 and record["synthetic"] and record["paper_error"] == 0.0
    assert record["test_set"]["size"] == 10 and record["embedding"]["dim"] > 10
    assert record["choices"]["pairs_per_step"] == 8 * 7 and record["choices"]["init"]["scale"] == 0.95
    assert [h["iteration"] for h in record["history"] if "test_error" in h] == [3, 6]  # the evaluations
    assert len(list((run_dir / "pictures").glob("*.png"))) == 1
    # The saved transformer scores what the record says.
    spec, *_ = smoke_specs(runs, "digit=2")
    data = load_coloc_data(spec)
    assert (
        localisation_error(load_trained_transformer(run_dir), data.images, data.boxes) == record["test_error"]
    )
    again = run_smoke(runs, run_dir, "digit=2")  # finished: read back, not run again
    assert (again["history"], again["wall_time_s"]) == (record["history"], record["wall_time_s"])


def test_a_run_is_deterministic_by_seed(runs, tmp_path):
    a = run_smoke(runs, cell_dir(runs, "coloc_tc-synthetic-digit0"), "data=coloc_tc")
    b = run_smoke(runs, tmp_path / "b", "data=coloc_tc")
    run_smoke(runs, tmp_path / "c", "data=coloc_tc", "seed=2")
    assert a["history"] == b["history"] and a["paper_error"] is None
    wa, wb, wc = (
        torch.load(d / "model.pt", weights_only=True)["state_dict"]
        for d in (cell_dir(runs, "coloc_tc-synthetic-digit0"), tmp_path / "b", tmp_path / "c")
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_an_interrupted_run_resumes_to_the_same_final_state(runs, tmp_path):
    pictures = ("trainer.iterations=8", "trainer.picture_every=2")
    straight = run_smoke(runs, tmp_path / "straight", *pictures)
    stopped = run_smoke(runs, tmp_path / "resumed", *pictures, settings_change={"stop_after": 3})
    assert stopped == {"finished": False, "iterations": 3, "stopped_by": None}
    resumed = run_smoke(runs, tmp_path / "resumed", *pictures)
    assert resumed["history"] == straight["history"] and resumed["test_error"] == straight["test_error"]
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the boxes over training, one entry per picture step, the same whether or not the run was interrupted
    boxes = [
        json.loads((tmp_path / run / "pictures" / BOX_HISTORY_NAME).read_text())
        for run in ("straight", "resumed")
    ]
    assert boxes[0] == boxes[1]
    assert [e["iteration"] for e in boxes[0]] == [2, 4, 6, 8] and len(boxes[0][-1]["boxes"]) == 8
    final = predicted_boxes(
        load_trained_transformer(tmp_path / "straight"), load_coloc_data(smoke_specs(runs)[0]).images[:8]
    )
    assert torch.allclose(torch.tensor(boxes[0][-1]["boxes"]), final, atol=1e-4)


def test_the_box_history_replaces_steps_a_resumed_run_draws_again(tmp_path):
    path = tmp_path / "pictures" / BOX_HISTORY_NAME
    boxes = torch.tensor([[0.0, 0.0, 28.0, 28.0], [10.0, 10.0, 40.0, 40.0]])
    for iteration in (0, 250, 500):
        history = update_box_history(path, iteration, boxes + iteration / 250)
    assert [it for it, _ in history] == [0, 250, 500] and torch.equal(history[1][1], boxes + 1)
    # resumed from a checkpoint at 300: the picture at 500 is drawn again and replaces the old one
    history = update_box_history(path, 500, boxes)
    assert [it for it, _ in history] == [0, 250, 500] and torch.equal(history[-1][1], boxes)
    history = update_box_history(path, 400, boxes)
    assert [it for it, _ in history] == [0, 250, 400]
    fig = boxes_figure(torch.zeros(2, 1, 84, 84), boxes, boxes, torch.zeros(2, 1, 28, 28), history)
    assert len(fig.axes) == 2 * 3  # found boxes, transformer output, boxes over training
    assert len(fig.axes[-1].patches) == 1 + 3  # the true box and one box per picture step
    plt.close(fig)


def test_window_negatives_get_their_own_cell_and_resume_exactly(runs, tmp_path):
    cfg = compose_coloc([*SMOKE, "coloc.negatives=window", "digit=2"])
    assert cfg.cell == "coloc_t-synthetic-window-digit2"  # not the crop run's folder
    spec, *_ = smoke_specs(runs, "coloc.negatives=window")
    assert spec.cell == cfg.cell.replace("digit2", "digit0")
    straight = run_smoke(runs, tmp_path / "straight", "coloc.negatives=window", "trainer.iterations=8")
    assert straight["choices"]["negatives"] == "window"
    crop = run_smoke(runs, tmp_path / "crop", "trainer.iterations=8")
    assert crop["history"] != straight["history"]  # the negatives are drawn, not ignored
    run_smoke(
        runs, tmp_path / "resumed", "coloc.negatives=window", "trainer.iterations=8",
        settings_change={"stop_after": 3},
    )  # fmt: skip
    resumed = run_smoke(runs, tmp_path / "resumed", "coloc.negatives=window", "trainer.iterations=8")
    assert resumed["history"] == straight["history"]
    with pytest.raises(ValueError, match="negatives='elsewhere'"):
        smoke_specs(runs, "coloc.negatives=elsewhere")


def test_crop_then_window_is_crops_before_its_switch_and_windows_after(runs, tmp_path):
    switch = ("coloc.negatives=crop_then_window", "trainer.iterations=8", "trainer.eval_every=1")
    cfg = compose_coloc([*SMOKE, *switch[:1], "coloc.window_from=4", "digit=2"])
    assert cfg.cell == "coloc_t-synthetic-crop_then_window4-digit2"  # the switch step names the folder
    # A switch at the last step is the crop run, at step 0 the window run: exactly.
    crop = run_smoke(runs, tmp_path / "crop", *switch[1:])
    window = run_smoke(runs, tmp_path / "window", "coloc.negatives=window", *switch[1:])
    late = run_smoke(runs, tmp_path / "late", *switch, "coloc.window_from=8")
    early = run_smoke(runs, tmp_path / "early", *switch, "coloc.window_from=0")
    assert late["history"] == crop["history"] and early["history"] == window["history"]
    assert late["choices"]["negatives"] == "crop_then_window8" and late["choices"]["window_from"] == 8
    # Switched at step 4: the first four steps are the crop run's, the rest differ from it.
    middle = run_smoke(runs, tmp_path / "middle", *switch, "coloc.window_from=4")
    before = [e for e in middle["history"] if e["iteration"] <= 4]
    assert before == [e for e in crop["history"] if e["iteration"] <= 4]
    assert middle["history"] != crop["history"]
    # Stopped before the switch and resumed: the same run.
    run_smoke(runs, tmp_path / "resumed", *switch, "coloc.window_from=4", settings_change={"stop_after": 3})
    resumed = run_smoke(runs, tmp_path / "resumed", *switch, "coloc.window_from=4")
    assert resumed["history"] == middle["history"]
    with pytest.raises(ValueError, match="window_from"):
        smoke_specs(runs, "coloc.negatives=crop_then_window")  # no switch step given


def test_crop_then_window_restarts_the_optimiser_at_its_switch():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 1, 84, 84), dtype=torch.uint8)
    embedding = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8)).requires_grad_(False)

    def learner(negatives, window_from=None):
        torch.manual_seed(1)
        transformer = colocalisation_transformer(0.95, scale_range=(0.25, 1.0), inside=True)
        return ColocLearner(
            transformer,
            embedding,
            images,
            TrainSettings(iterations=6, lr=1e-3),
            batch_size=4,
            seed=1,
            negatives=negatives,
            window_from=window_from,
        )

    switched, crop = learner("crop_then_window", 3), learner("crop")
    adam_steps = []
    for _ in range(5):
        switched.step(), crop.step()
        adam_steps.append(int(next(iter(switched.optimizer.state.values()))["step"]))
    # Adam counts its steps afresh from the switch: 1, 2, 3 on crops, then 1, 2 on windows.
    assert adam_steps == [1, 2, 3, 1, 2]
    assert int(next(iter(crop.optimizer.state.values()))["step"]) == 5


def test_a_job_waits_for_the_embedding_another_process_trains(tmp_path):
    _, _, spec, settings, embedding_dir = smoke_specs(tmp_path)
    logs, result = [], {}
    with RunLock(embedding_dir, log=lambda s: None):
        worker = threading.Thread(
            target=lambda: result.update(
                ensure_embedding(spec, settings, embedding_dir, log=logs.append, wait_s=0.05)
            )
        )
        worker.start()
        deadline = time.monotonic() + 10
        while not any("waiting" in line for line in logs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("waiting for the embedding" in line for line in logs) and not result
    worker.join(timeout=60)
    assert result["finished"] and (embedding_dir / "model.pt").exists()
    assert load_embedding(embedding_dir)(torch.zeros(1, 1, 28, 28)).shape[0] == 1


def test_a_copied_finished_embedding_is_reused_and_another_run_is_refused(runs, tmp_path):
    # A finished embedding copied elsewhere (as results/records/coloc_<profile>/embedding is committed):
    # pointing embedding.run_dir at it trains nothing and the run's record names it.
    _, _, _, _, trained_dir = smoke_specs(runs)
    copied = tmp_path / "committed" / "embedding"
    copied.mkdir(parents=True)
    for name in ("record.json", "model.pt"):
        (copied / name).write_bytes((trained_dir / name).read_bytes())
    logs = []
    record = run_smoke(tmp_path / "fresh", tmp_path / "run", f"embedding.run_dir={copied}", log=logs.append)
    assert record["finished"] and record["embedding"]["run_dir"] == str(copied)
    assert sorted(p.name for p in copied.iterdir()) == ["model.pt", "record.json"]  # nothing written there
    assert any(line.startswith("synthetic-embedding-cnn seed 1: already finished") for line in logs)
    # A finished run of something else in that place: a clear error, not a wrong e().
    write_record(copied / "record.json", record)  # as a run writes it
    with pytest.raises(ValueError, match=r"not an embedding of synthetic digits.*embedding\.run_dir"):
        run_smoke(tmp_path / "fresh", tmp_path / "other", f"embedding.run_dir={copied}")


def test_a_job_leaves_its_overrides_in_an_unfinished_embedding_only(tmp_path):
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- digit=3\n")
    training, finished = tmp_path / "training", tmp_path / "finished"
    training.mkdir()
    finished.mkdir()
    (finished / "record.json").write_text(json.dumps({"finished": True, "cell": "mnist-embedding-cnn"}))
    leave_launch_overrides(job, training)  # what `make park` reads to resume it
    leave_launch_overrides(job, finished)  # e.g. the committed results/records/coloc_paper/embedding
    assert (training / ".hydra" / "overrides.yaml").read_text() == "- digit=3\n"
    assert sorted(p.name for p in finished.iterdir()) == ["record.json"]


def test_the_table_has_every_class_the_mean_and_the_papers_numbers(runs, tmp_path, monkeypatch):
    # The runs of the tests above (read back, or made here when this test runs alone).
    run_smoke(runs, cell_dir(runs, "coloc_t-synthetic-digit2"), "digit=2")
    run_smoke(runs, cell_dir(runs, "coloc_tc-synthetic-digit0"), "data=coloc_tc")
    records = [r for r in collect_records(runs) if r.get("experiment") == "coloc"]
    assert len(records) == 2 and collect_records(runs)[0]["experiment"] == "coloc_embedding"
    rows = coloc_rows(records)
    assert all(r["synthetic"] and r["profile"] == "smoke" for r in rows)
    [(csv_path, md_path)] = write_coloc_tables(records, tmp_path / "results", "smoke")
    assert md_path.name == "coloc_table5_smoke_plain_e_synthetic.md" and csv_path.exists()
    text = md_path.read_text()
    assert "SYNTHETIC" in text and "REDUCED BUDGET" in text and "| **mean** |" in text
    assert "(100)" in text and "(75-93)" in text and "not run (75-93)" in text
    row = next(r for r in rows if r["data"] == "coloc_t" and r["digit"] == 2)
    assert f"| 2 | {row['localised_mean']:.1f} (100) |" in text
    # The command line writes the same table.
    assert (
        table_main(
            [
                "--experiment",
                "coloc",
                "--runs",
                str(runs),
                "--out",
                str(tmp_path / "cli"),
                "--profile",
                "smoke",
            ]
        )
        == 0
    )
    # Without the embedding's record the table says its cost is not given; the command line reads the
    # embedding record under --runs and states its wall time, devices and commits.
    assert "its training time is not given" in text and "trained in" not in text
    [embedding] = [r for r in collect_records(runs) if r["experiment"] == "coloc_embedding"]
    cli_text = (tmp_path / "cli" / md_path.name).read_text()
    hours = f"{embedding['wall_time_s'] / 3600:.2f} h wall time on {embedding['device']}"
    assert f"trained in {hours} (commits {embedding['commit'][:12]})" in cli_text
    assert [r["embedding_wall_time_s"] for r in coloc_rows(collect_records(runs))] == [
        embedding["wall_time_s"]
    ] * 2
    differ = [(a, b) for a, b in zip(text.splitlines(), cli_text.splitlines(), strict=True) if a != b]
    # All else the same, but that the command line names the records folder it was given.
    assert [a.split(":")[0] for a, _ in differ] == [
        "- Embedding e() (Sect. 2 CNN on undistorted digits)",
        "- Made by `stn-table --experiment coloc --profile smoke` from the run records.",
    ]
    # Without --runs: the runs the runners write, $STN_RUNS/coloc.
    monkeypatch.setenv("STN_RUNS", str(runs))
    assert table_main(["--experiment", "coloc", "--out", str(tmp_path / "env"), "--profile", "smoke"]) == 0
    assert f"- Made by `stn-table --experiment coloc --runs {runs} --profile smoke`" in cli_text
    env_text = (tmp_path / "env" / md_path.name).read_text()
    assert env_text == cli_text.replace(f" --runs {runs}", "")  # the default folder is not named


def test_box_errors_tell_size_from_place():
    true = torch.tensor([[10.0, 10.0, 38.0, 38.0], [10.0, 10.0, 38.0, 38.0]])
    # twice the side from the same corner; the right size 14 px to the right
    found = torch.tensor([[10.0, 10.0, 66.0, 66.0], [24.0, 10.0, 52.0, 38.0]])
    errors = box_errors(found, true)
    assert torch.allclose(errors["iou"], torch.tensor([0.25, 1 / 3]))
    assert torch.allclose(errors["size_ratio"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(errors["centre_offset_px"], torch.tensor([14 * 2**0.5, 14.0]))
    # the true size at the found centre: 28 px boxes 14 px off diagonally, and the same box as found
    assert torch.allclose(errors["iou_true_size"], torch.tensor([196 / 1372, 1 / 3]))
    # the found size at the true centre: the 56 px box around the true one, and the true box itself
    assert torch.allclose(errors["iou_true_centre"], torch.tensor([0.25, 1.0]))


def test_the_boxes_table_reads_each_runs_transformer_and_checks_it_against_the_record(
    runs, tmp_path, monkeypatch
):
    record = run_smoke(runs, cell_dir(runs, "coloc_t-synthetic-digit2"), "digit=2")
    out = tmp_path / "boxes.md"
    assert boxes_main(["--runs", str(runs), "--profile", "smoke", "--out", str(out)]) == 0
    text = out.read_text()
    # By default the runs the runners write: $STN_RUNS/coloc.
    monkeypatch.setenv("STN_RUNS", str(runs))
    assert boxes_main(["--profile", "smoke", "--out", str(tmp_path / "default.md")]) == 0
    default = (tmp_path / "default.md").read_text()
    assert default.splitlines()[:-1] == text.splitlines()[:-1]  # the last line names the folder
    assert f"--runs {runs / 'coloc'} --profile smoke" in default
    assert f"| T | 2 | 1 | {100 - record['test_error']:.1f} | " in text and "synthetic digits" in text
    # A record whose number its weights do not give is refused, naming the run.
    changed = cell_dir(tmp_path / "changed", "coloc_t-synthetic-digit2")
    changed.mkdir(parents=True)
    (changed / "model.pt").write_bytes((cell_dir(runs, "coloc_t-synthetic-digit2") / "model.pt").read_bytes())
    (changed / "record.json").write_text(json.dumps(record | {"test_error": record["test_error"] - 10}))
    with pytest.raises(ValueError, match="coloc_t-synthetic-digit2/seed1: its saved transformer localises"):
        boxes_main(["--runs", str(tmp_path / "changed"), "--profile", "smoke", "--out", str(out)])


def test_the_sweep_runs_from_the_command_line(tmp_path):
    env = {**os.environ, "STN_RUNS": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "experiments.coloc", "-m", "digit=0,1", *SMOKE, "trainer.num_threads=1"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for digit in (0, 1):
        assert (
            tmp_path
            / "runs"
            / "coloc"
            / "smoke"
            / f"coloc_t-synthetic-digit{digit}"
            / "seed1"
            / "record.json"
        ).exists()
    assert (
        tmp_path / "runs" / "coloc" / "embedding" / "smoke" / "synthetic" / "seed1" / "record.json"
    ).exists()
    assert "already finished" in done.stdout  # the second job reused the first one's embedding
    # The job that trained the embedding left its overrides there: `make park` can name its relaunch.
    embedding_dir = tmp_path / "runs" / "coloc" / "embedding" / "smoke" / "synthetic" / "seed1"
    command = launch_command(embedding_dir, tmp_path / "runs")
    assert command.startswith("python -m experiments.coloc digit=0 ") and "data.source=synthetic" in command


# --- the loss landscape diagnostic ------------------------------------------------------------------------------


def test_box_centred_windows_invert_the_window_box():
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0], [0.0, 56.0, 28.0, 84.0]])
    params = box_centred_windows(boxes, 1 / 3, 84)
    torch.testing.assert_close(attention_boxes(params, 84), boxes, rtol=0, atol=1e-4)
    moved = attention_boxes(box_centred_windows(boxes, 1 / 3, 84, shift_px=10.0), 84)
    torch.testing.assert_close(moved, boxes + 10.0, rtol=0, atol=1e-4)
    wide = attention_boxes(box_centred_windows(boxes, 0.5, 84), 84)
    torch.testing.assert_close(wide[:, 2] - wide[:, 0], torch.full((2,), 42.0), rtol=0, atol=1e-4)


def test_hinge_at_windows_is_the_loss_of_a_transformer_that_chose_them():
    """The diagnostic scores a window exactly as a training step scores the same window."""
    torch.manual_seed(0)
    model, _ = build_mnist_model("cnn", (1, 28, 28), param_budget=20_000)
    embedding = CnnEmbedding(model.classifier, normalise="unit")
    images = torch.rand(6, 1, 84, 84)
    boxes = torch.tensor([[10.0, 10.0, 38.0, 38.0]]).repeat(6, 1) + torch.arange(6.0)[:, None] * 5
    params = box_centred_windows(boxes, 0.4, 84)
    got = hinge_at_windows(embedding, images, {"w": params}, seed=3)["w"]
    family = get_transform("attention")
    views = sample(images, family.grid(params, (28, 28)), align_corners=family.align_corners)
    crops, _ = random_crops(images, 28, torch.Generator().manual_seed(3))
    assert got == colocalisation_hinge(embedding(views), embedding(crops)).item()
    # A window somewhere else gives another loss: the windows are read, not ignored.
    other = hinge_at_windows(embedding, images, {"w": box_centred_windows(boxes, 0.9, 84)}, seed=3)["w"]
    assert other != got
    # Window negatives: each window is scored against windows of its own scale at random places.
    got = hinge_at_windows(embedding, images, {"w": params}, seed=3, negatives="window")["w"]
    negatives = random_windows(images, params[:, 0], 28, torch.Generator().manual_seed(3))
    assert got == colocalisation_hinge(embedding(views), embedding(negatives)).item()
    with pytest.raises(ValueError, match="unknown negatives"):
        hinge_at_windows(embedding, images, {"w": params}, negatives="elsewhere")


def test_the_landscape_command_prints_every_window_for_every_norm(runs, capsys):
    _, _, _, _, embedding_dir = smoke_specs(runs)
    landscape_main(
        ["--embedding", str(embedding_dir), "--source", "synthetic", "--digits", "3", "--norms", "unit,none"]
    )
    out = capsys.readouterr().out
    assert "coloc_t digit 3" in out and "| window | unit | none |" in out
    assert out.count("| centred s=") == len(LANDSCAPE_SCALES)
    assert "true size, 10 px off" in out and "true size, image centre" in out
    assert "negatives: crop" in out
    landscape_main(
        ["--embedding", str(embedding_dir), "--source", "synthetic", "--digits", "3", "--negatives", "window"]
    )
    assert "negatives: window" in capsys.readouterr().out

    def losses(*extra):
        landscape_main(["--embedding", str(embedding_dir), "--source", "synthetic", "--digits", "3", *extra])
        out = capsys.readouterr().out
        rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| centred")]
        return out, [float(r[1].strip(" |*")) for r in rows]

    _, at_1 = losses("--norms", "unit")
    out, at_4 = losses("--norms", "unit", "--margin", "4")
    # max(0, x + 4) - max(0, x + 1) lies in [0, 3] for every pair; with unit e() (x >= -4) it is above 0
    assert "negatives: crop, margin 4" in out
    assert all(0 < b - a <= 3 + 1e-6 for a, b in zip(at_1, at_4, strict=True))
    with pytest.raises(SystemExit):
        landscape_main(["--embedding", str(embedding_dir), "--norms", "cosine"])


def test_the_fast_profile_trains_the_embedding_with_the_fast_optimiser():
    spec, settings, embedding_spec, embedding_settings, embedding_dir = specs_from_config(
        compose_coloc(["profile=fast", "embedding=plain"])
    )
    assert (settings.iterations, spec.batch_size, spec.profile, spec.reduced_budget) == (
        2000,
        100,
        "fast",
        True,
    )
    assert (embedding_settings.iterations, embedding_spec.batch_size) == (15_000, 128)
    assert (embedding_settings.lr, embedding_settings.lr_schedule, embedding_settings.nesterov) == (
        0.1,
        "cosine",
        True,
    )
    assert embedding_settings.warmup_iterations == 300
    assert embedding_dir.parts[-4:] == ("embedding", "fast", "mnist", "seed1")
    # The other profiles keep configs/coloc.yaml's embedding optimiser (the Sect. 2 protocol's SGD).
    _, _, _, paper_settings, _ = specs_from_config(compose_coloc(["profile=paper", "embedding=plain"]))
    assert (paper_settings.lr, paper_settings.lr_schedule, paper_settings.nesterov) == (0.01, "step", False)


def test_runs_with_other_negatives_are_a_study_beside_the_table_not_in_it(runs, tmp_path):
    crop = run_smoke(runs, cell_dir(runs, "coloc_t-synthetic-digit2"), "digit=2")
    window = {
        **crop,
        "cell": "coloc_t-synthetic-window-digit2",
        "test_error": 40.0,
        "choices": {**crop["choices"], "negatives": "window"},
    }
    older = {**crop, "choices": {k: v for k, v in crop["choices"].items() if k != "negatives"}}
    rows = coloc_rows([older, window])  # a record from before the choice counts as crop
    assert sorted(r["negatives"] for r in rows) == ["crop", "window"]
    [(csv_path, md_path)] = write_coloc_tables([crop, window], tmp_path, "smoke")
    text = md_path.read_text()
    crop_text = f"{100 - crop['test_error']:.1f}"
    assert f"| 2 | {crop_text} (100) |" in text  # the table holds the default's run only
    assert "`coloc.negatives=window`" in text and f"| T | 2 | 60.0 | {crop_text} | 100 |" in text
    assert "window" in csv_path.read_text().splitlines()[2]
    # A study of all ten classes of a set gets its mean beside the default's; a study of another length
    # says so.
    every = [{**crop, "digit": d, "test_error": 100.0 - d} for d in range(10)]
    longer = [
        {
            **r,
            "test_error": 100.0 - 2 * r["digit"],
            "iterations": 7,
            "choices": {**crop["choices"], "negatives": "window"},
        }
        for r in every
    ]
    [(_, md_path)] = write_coloc_tables(every + longer, tmp_path / "all", "smoke")
    text = md_path.read_text()
    assert "| T | **mean** | **9.0** | **4.5** | 100 |" in text and "Each ran 7 iterations." in text
    # A run of the default negatives but another length than the profile's is a study, not a cell.
    short = {**crop, "iterations": 3, "test_error": 0.0}
    [(_, md_path)] = write_coloc_tables(
        [crop, short], tmp_path / "short", "smoke", (crop["iterations"], crop["batch_size"])
    )
    text = md_path.read_text()
    assert f"| 2 | {crop_text} (100) |" in text
    assert "the table's negatives (`coloc.negatives=crop`), another length. Each ran 3 iterations." in text
    assert (
        "| set | digit | 3 iterations | crop (above) | paper |" in text
        and f"| T | 2 | 100.0 | {crop_text} | 100 |" in text
    )
    # Without the profile's length given, the most common one among the runs fills the cells.
    [(_, md_path)] = write_coloc_tables([crop, short, {**short, "digit": 3}], tmp_path / "most", "smoke")
    assert "| 2 | 100.0 (100) |" in md_path.read_text()
