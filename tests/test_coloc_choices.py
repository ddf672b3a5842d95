"""Co-localisation's e() as the paper's (a Table 1 CNN run), and the choices issue 46 measures: the logits-only
weighting, the tuning draw, resampled negatives, the oracle start, and the loss-surface diagnostic."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.coloc import specs_from_config
from stn_analysis.diagnostics.coloc_surface import relative_windows, window_iou
from stn_repro.models.coloc import (
    CnnEmbedding,
    attention_boxes,
    box_iou,
    colocalisation_transformer,
    combine_layers,
)
from stn_repro.models.mnist import build_mnist_model
from stn_repro.tasks.coloc.embedding import load_embedding, read_table1_embedding
from stn_repro.tasks.coloc.learner import (
    ColocLearner,
    _box_params,
    random_crops,
    random_negatives,
    random_windows,
)
from stn_repro.tasks.coloc.task import ColocSpec, load_coloc_data, run_coloc_seed
from stn_repro.training.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_CNN = ROOT / "results" / "records" / "mnist_fast" / "r-cnn-none" / "seed1"
COMMITTED_RTS_CNN = ROOT / "results" / "records" / "mnist_fast" / "rts-cnn-none" / "seed1"


def compose_coloc(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("coloc", overrides=overrides)


def synthetic_spec(**changes) -> ColocSpec:
    """A small co-localisation spec on the synthetic digits (no real MNIST needed)."""
    fields = {
        "data": "coloc_t",
        "digit": 3,
        "seed": 1,
        "batch_size": 2,
        "profile": "smoke",
        "reduced_budget": True,
        "num_images": 4,
        "data_source": "synthetic",
    }
    return ColocSpec(**{**fields, **changes})


def run_with_table1_e(spec, settings, run_dir, embedding_dir):
    """One co-localisation run with a finished Table 1 CNN as e(), quietly."""
    return run_coloc_seed(
        spec,
        settings,
        run_dir,
        embedding_spec=None,
        embedding_settings=None,
        embedding_dir=embedding_dir,
        log=lambda s: None,
    )


def small_cnn():
    torch.manual_seed(0)
    model, _ = build_mnist_model("cnn", (1, 28, 28), param_budget=5000)
    return model.classifier


# --- e() ---------------------------------------------------------------------------------------------------------


def test_the_logits_weighting_is_the_classification_layer_alone():
    embedding = CnnEmbedding(small_cnn(), normalise="logits")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(embedding(x), embedding.cnn(x))
    parts = embedding.layers(x)
    assert [p.shape[1] for p in parts][-1] == 10 and len(parts) == 3
    assert torch.equal(combine_layers(parts, "none"), torch.cat(parts, dim=1))
    assert embedding.input_side == 28


def test_the_default_e_is_a_committed_table1_cnn_and_nothing_is_trained():
    _, _, embedding_spec, embedding_settings, embedding_dir = specs_from_config(compose_coloc([]))
    assert embedding_spec is None and embedding_settings is None
    record = read_table1_embedding(embedding_dir)
    assert (record["experiment"], record["model"], record["transform"]) == ("mnist", "cnn", None)
    # embedding=plain keeps the suite's first reading: a CNN trained on undistorted digits.
    _, _, plain_spec, plain_settings, plain_dir = specs_from_config(compose_coloc(["embedding=plain"]))
    assert plain_spec is not None and plain_settings.iterations == 150_000 and "embedding" in plain_dir.parts


@pytest.mark.skipif(not COMMITTED_CNN.is_dir(), reason="the committed fast R CNN record is absent")
def test_a_table1_e_is_refused_clearly_when_it_is_not_a_finished_cnn(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        read_table1_embedding(tmp_path)
    other = tmp_path / "fcn"
    other.mkdir()
    record = json.loads((COMMITTED_CNN / "record.json").read_text())
    (other / "record.json").write_text(json.dumps({**record, "model": "fcn"}))
    with pytest.raises(ValueError, match="not a Table 1 CNN"):
        read_table1_embedding(other)
    no_weights = tmp_path / "cnn"
    no_weights.mkdir()
    shutil.copy(COMMITTED_CNN / "record.json", no_weights / "record.json")
    with pytest.raises(FileNotFoundError, match="weights"):
        read_table1_embedding(no_weights)


@pytest.mark.skipif(not COMMITTED_RTS_CNN.is_dir(), reason="the committed fast RTS CNN record is absent")
def test_a_cnn_of_another_input_size_is_refused(tmp_path):
    assert load_embedding(COMMITTED_RTS_CNN).input_side == 42
    spec = synthetic_spec(batch_size=4)
    settings = TrainSettings(iterations=2, lr=1e-3, log_every=1, eval_every=0, checkpoint_every=0)
    with pytest.raises(ValueError, match="42x42"):
        run_with_table1_e(spec, settings, tmp_path / "run", COMMITTED_RTS_CNN)


# --- the draws and the negatives ------------------------------------------------------------------------------------


def test_the_tuning_draw_is_the_classes_next_images():
    def spec(offset, count):
        return synthetic_spec(digit=4, num_images=count, image_offset=offset)

    both, scored, tuning = (
        load_coloc_data(spec(0, 20)),
        load_coloc_data(spec(0, 10)),
        load_coloc_data(spec(10, 10)),
    )
    assert torch.equal(both.indices, torch.cat([scored.indices, tuning.indices]))
    assert not set(tuning.indices.tolist()) & set(scored.indices.tolist())  # other digits than Table 5's
    with pytest.raises(ValueError, match="image_offset"):
        spec(-1, 10)
    with pytest.raises(ValueError, match="from its 10000-th on"):
        load_coloc_data(spec(10_000, 10))


def test_negatives_of_another_size_are_resampled_windows_and_equal_crops_at_the_output_size():
    images = torch.rand(5, 1, 84, 84)
    same = random_negatives(images, 28, 28, torch.Generator().manual_seed(3))
    assert torch.equal(same, random_crops(images, 28, torch.Generator().manual_seed(3))[0])
    wide = random_negatives(images, 42, 28, torch.Generator().manual_seed(3))
    scales = torch.full((5,), 42 / 84)
    assert wide.shape == (5, 1, 28, 28)
    assert torch.equal(wide, random_windows(images, scales, 28, torch.Generator().manual_seed(3)))
    # The whole image as the "crop": every output pixel's centre falls on the centre of every third pixel.
    whole = random_negatives(images, 84, 28, torch.Generator().manual_seed(0))
    assert torch.allclose(whole, images[..., 1::3, 1::3], atol=1e-5)


# --- the oracle start ---------------------------------------------------------------------------------------------------


def test_box_params_are_the_windows_of_the_boxes():
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0], [0.0, 56.0, 28.0, 84.0]])
    assert torch.allclose(attention_boxes(_box_params(boxes, 84)), boxes, atol=1e-4)


def test_the_oracle_start_fits_the_true_boxes_then_hands_over_to_the_hinge_loss():
    torch.manual_seed(0)
    images = torch.zeros(8, 1, 84, 84)
    boxes = torch.zeros(8, 4)
    for i in range(8):  # a bright 28 px square at a different place in each image
        x0, y0 = 4 + 7 * i, 50 - 6 * i
        images[i, 0, y0 : y0 + 28, x0 : x0 + 28] = 1.0
        boxes[i] = torch.tensor([x0, y0, x0 + 28, y0 + 28], dtype=torch.float32)
    transformer = colocalisation_transformer(0.95, scale_range=(0.25, 1.0), inside=True)
    embedding = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4)).requires_grad_(False)
    settings = TrainSettings(iterations=300, lr=1e-2, log_every=100, eval_every=0, checkpoint_every=0)
    learner = ColocLearner(
        transformer,
        embedding,
        images,
        settings,
        batch_size=8,
        seed=1,
        oracle_boxes=boxes,
        oracle_steps=300,
    )
    start = box_iou(attention_boxes(transformer.localisation(images)), boxes).mean().item()
    losses = [learner.step().item() for _ in range(300)]
    fitted = box_iou(attention_boxes(transformer.localisation(images)), boxes).mean().item()
    assert losses[-1] < 0.1 * losses[0] and fitted > 0.6 > start
    assert learner.optimizer.state_dict()["state"][0]["step"].item() == 300  # Adam's moments from the fit ...
    learner.step()  # ... and the first hinge step starts it afresh (a new loss)
    assert learner.steps == 301 and learner.optimizer.state_dict()["state"][0]["step"].item() == 1
    with pytest.raises(ValueError, match="true boxes"):
        ColocLearner(transformer, embedding, images, settings, batch_size=8, seed=1, oracle_steps=5)


def test_oracle_runs_have_cells_of_their_own():
    cfg = compose_coloc(["coloc.oracle_steps=500", "digit=5"])
    spec = specs_from_config(cfg)[0]
    assert spec.cell == cfg.cell == "coloc_t-oracle500-digit5"
    assert specs_from_config(compose_coloc(["digit=5"]))[0].cell == "coloc_t-digit5"


# --- the surface diagnostic ----------------------------------------------------------------------------------------------


def test_surface_windows_are_placed_relative_to_each_box():
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0], [40.0, 0.0, 68.0, 28.0]])
    grid, params = relative_windows(boxes)
    true_index = grid.index((1.0, 0.0, 0.0))
    assert torch.allclose(attention_boxes(params[true_index]), boxes, atol=1e-4)
    assert window_iou(1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert window_iou(2.0, 0.0, 0.0) == pytest.approx(0.25)  # a window twice the side: a quarter of its area
    assert window_iou(1.0, 14.0, 0.0) == pytest.approx(14 * 28 / (2 * 28 * 28 - 14 * 28))


def test_surface_scores_each_negatives_size_and_the_empty_view():
    from stn_analysis.diagnostics.coloc_surface import summarise, surface

    embedding = CnnEmbedding(small_cnn(), normalise="none")
    images = (_squares(4) * 255).to(torch.uint8)
    boxes = torch.tensor([[50.0 - 8 * i, 10.0 + 9 * i, 78.0 - 8 * i, 38.0 + 9 * i] for i in range(4)])
    result = surface(embedding, images, boxes, ["unit"], seed=3, crop_sizes=(28, 56))
    assert set(result["by_crop"]) == {28, 56} and len(result["by_crop"][28]["unit"]["losses"]) == 81
    # The empty view is the same for every image, so every pair agrees: loss = mean_n max(0, 1 - |z0 - r_n|^2).
    x = images.float() / 255.0
    for crop in (28, 56):
        r = combine_layers(
            embedding.layers(random_negatives(x, crop, 28, torch.Generator().manual_seed(3))), "unit"
        )
        z0 = combine_layers(embedding.layers(torch.zeros(1, 1, 28, 28)), "unit")
        expected = torch.relu(1 - (z0 - r).pow(2).sum(1)).mean().item()
        assert result["by_crop"][crop]["unit"]["empty"] == pytest.approx(expected, rel=1e-5)
    assert result["by_crop"][28]["unit"]["losses"] != result["by_crop"][56]["unit"]["losses"]
    summary = summarise({5: result}, "unit", 56)
    assert summary["rows"][0][-1] == result["by_crop"][56]["unit"]["empty"]
    assert summary["true_below_empty"] in (0, 1)


@pytest.mark.skipif(
    not (ROOT / "results/records/mnist_fast/p-cnn-none/seed1").is_dir(), reason="no committed P CNN"
)
def test_a_run_with_the_papers_e_names_it_and_inherits_its_reduced_budget(tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_coloc(
        ["profile=smoke", "data.source=synthetic", "logger=none", "coloc.num_images=8", "digit=1"]
    )
    OmegaConf.update(cfg, "paths.runs_dir", str(tmp_path))
    spec, settings, _, _, embedding_dir = specs_from_config(cfg)
    assert not spec.reduced_budget or spec.profile == "smoke"
    record = run_with_table1_e(spec, settings, tmp_path / "run", embedding_dir)
    assert (
        record["finished"] and record["embedding"]["kind"] == "table1" and record["embedding"]["data"] == "p"
    )
    assert record["embedding"]["profile"] == "fast" and record["reduced_budget"]  # e() had the fast budget
    assert record["choices"]["image_offset"] == 0 and record["choices"]["oracle_steps"] == 0

    # The folder is named by the cell only: run again, the same setup is the finished run; another setup
    # (a choice or e()) is refused rather than reported as the old run.
    def again(changed_spec, changed_embedding_dir=embedding_dir):
        return run_with_table1_e(changed_spec, settings, tmp_path / "run", changed_embedding_dir)

    assert again(spec)["test_error"] == record["test_error"]
    with pytest.raises(ValueError, match=r"another setup \(init: .*0\.8.*paths.runs_dir"):
        again(replace(spec, init_scale=0.8))
    other_e = tmp_path / "other_e"
    shutil.copytree(COMMITTED_CNN, other_e)
    with pytest.raises(ValueError, match=r"e\(\): weights .* there"):
        again(spec, other_e)


def _squares(count=6):
    images = torch.zeros(count, 1, 84, 84)
    for i in range(count):
        images[i, 0, 10 + 9 * i : 38 + 9 * i, 50 - 8 * i : 78 - 8 * i] = 1.0
    return images


def _multi_start(images, starts, start_steps=4, on_choose=None):
    from stn_repro.tasks.coloc.learner import MultiStartLearner

    torch.manual_seed(0)
    embedding = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4)).requires_grad_(False)
    settings = TrainSettings(iterations=8, lr=1e-2, log_every=1, eval_every=0, checkpoint_every=0)
    candidates = [
        ColocLearner(
            colocalisation_transformer(s, (tx, ty)), embedding, images, settings, batch_size=6, seed=1
        )
        for s, tx, ty in starts
    ]
    return MultiStartLearner(candidates, start_steps, on_choose)


def test_several_starts_keep_the_lowest_loss_and_resume_exactly():
    images = _squares()
    starts = [(0.95, 0.0, 0.0), (0.5, 0.3, -0.3), (0.4, -0.4, 0.4)]
    learner = _multi_start(images, starts)
    sums = [0.0, 0.0, 0.0]
    for _ in range(4):
        learner.step()
    assert learner.chosen is not None and len(learner.candidates) == 1
    # The kept start is the one whose own loss was lowest over the last quarter of the start phase (step 4).
    alone = [_multi_start(images, starts).candidates[k] for k in range(3)]
    for k, candidate in enumerate(alone):
        for _ in range(4):
            loss = candidate.step().item()
        sums[k] = loss
    assert learner.chosen == min(range(3), key=sums.__getitem__)
    kept = alone[learner.chosen].transformer.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in learner.transformer.state_dict().items())
    # Stopped in the start phase and resumed: the same as uninterrupted.
    whole = _multi_start(images, starts)
    losses = [whole.step().item() for _ in range(7)]
    first = _multi_start(images, starts)
    head = [first.step().item() for _ in range(2)]
    resumed = _multi_start(images, starts)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.step().item() for _ in range(5)] == losses
    # The choice is told once it is made (for the record), and again to a run resumed after it.
    told = []
    chooser = _multi_start(images, starts, on_choose=lambda *choice: told.append(choice))
    for _ in range(4):
        chooser.step()
    assert told == [(learner.chosen, sums)]
    after = _multi_start(images, starts, on_choose=lambda *choice: told.append(choice))
    after.load_state_dict(chooser.state_dict())
    assert told[1] == told[0] and after.chosen == learner.chosen
    with pytest.raises(ValueError, match="two candidates"):
        _multi_start(images, starts[:1])


def test_the_search_probe_reports_the_boxes_as_it_trains(monkeypatch, capsys):
    from stn_analysis.diagnostics import coloc_search

    images = _squares()
    boxes = torch.tensor(
        [[50 - 8 * i, 10 + 9 * i, 78 - 8 * i, 38 + 9 * i] for i in range(6)], dtype=torch.float32
    )
    embedding = CnnEmbedding(small_cnn(), normalise="unit")
    line = coloc_search.search(embedding, (images * 255).to(torch.uint8), boxes, "free0.95_lr1e-2", steps=4)
    parts = line.split(" | ")
    assert line.startswith("free0.95_lr1e-2 (") and len(parts) == 4 and parts[-1].startswith("4: side ")
    with pytest.raises(SystemExit):
        coloc_search.main(["--variants", "nope"])


def test_the_search_probes_negatives_reach_the_learner(monkeypatch):
    from stn_analysis.diagnostics import coloc_search

    seen = []
    original = coloc_search.ColocLearner

    def spy(*args, **kwargs):
        seen.append(kwargs.get("negatives"))
        return original(*args, **kwargs)

    monkeypatch.setattr(coloc_search, "ColocLearner", spy)
    images = (_squares() * 255).to(torch.uint8)
    boxes = torch.zeros(6, 4)
    embedding = CnnEmbedding(small_cnn(), normalise="unit")
    for variant in ("free0.95_lr1e-2", "free0.95_lr1e-2_window"):
        coloc_search.search(embedding, images, boxes, variant, steps=1)
    assert seen == ["crop", "window"]


def test_a_run_of_several_starts_records_which_start_it_kept(tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_coloc(
        [
            "profile=smoke",
            "data.source=synthetic",
            "logger=none",
            "coloc.num_images=8",
            "coloc.extra_starts=[[0.5,0.25,-0.25]]",
            "coloc.start_steps=2",
        ]
    )
    OmegaConf.update(cfg, "paths.runs_dir", str(tmp_path))
    spec, settings, _, _, embedding_dir = specs_from_config(cfg)
    record = run_with_table1_e(spec, settings, tmp_path / "run", embedding_dir)
    kept = record["start_kept"]
    assert kept["start"] == [[0.95, 0.0, 0.0], [0.5, 0.25, -0.25]][kept["index"]]
    assert len(kept["mean_losses"]) == 2 and kept["mean_losses"][kept["index"]] == min(kept["mean_losses"])
    assert json.loads((tmp_path / "run" / "record.json").read_text())["start_kept"] == kept
