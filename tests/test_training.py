"""The training loop: exact resume, divergence handling, lr schedule, localisation lr multiplier."""

import itertools

import pytest
import torch
from torch import nn

from stn_repro.models.mnist import build_mnist_model
from stn_repro.training.checkpoints import CHECKPOINT_NAME
from stn_repro.training.learners import make_optimizer
from stn_repro.training.loop import TrainingDiverged, train
from stn_repro.training.settings import TrainSettings


class ToyStream:
    """A seeded, resumable stream of noisy 12x12 images whose label is the quadrant holding a bright square."""

    def __init__(self, batch_size=8, seed=0):
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.served = 0

    def next_batch(self):
        x = 0.3 * torch.rand(self.batch_size, 1, 12, 12, generator=self.generator)
        y = torch.randint(0, 4, (self.batch_size,), generator=self.generator)
        for i, label in enumerate(y.tolist()):
            row, col = divmod(label, 2)
            x[i, 0, 6 * row + 1 : 6 * row + 5, 6 * col + 1 : 6 * col + 5] = 1.0
        self.served += 1
        return x, y

    def state_dict(self):
        return {"rng": self.generator.get_state(), "served": self.served}

    def load_state_dict(self, state):
        self.generator.set_state(state["rng"])
        self.served = state["served"]


def small_model(seed=0):
    torch.manual_seed(seed)
    model, _ = build_mnist_model(
        "st_fcn", (1, 12, 12), num_classes=4, transform="affine", param_budget=20_000
    )
    return model


def eval_set():
    stream = ToyStream(batch_size=32, seed=99)
    return {"test": stream.next_batch()}


SETTINGS = dict(iterations=12, lr=0.05, lr_step_every=5, log_every=4, eval_every=6, checkpoint_every=3)


def quiet_train(stream, settings, run_dir, evaluation=None):
    """``train`` with this file's defaults: a fresh small model, the toy eval set, batch 8, no log."""
    evaluation = eval_set() if evaluation is None else evaluation
    return train(small_model(), stream, evaluation, settings, run_dir, batch_size=8, log=lambda s: None)


def test_an_interrupted_run_resumes_to_the_same_final_state(tmp_path):
    straight = small_model()
    straight_result = train(
        straight,
        ToyStream(),
        eval_set(),
        TrainSettings(**SETTINGS),
        tmp_path / "a",
        batch_size=8,
        log=lambda s: None,
    )

    resumed = small_model()
    first = train(
        resumed,
        ToyStream(),
        eval_set(),
        TrainSettings(**SETTINGS, stop_after=7),
        tmp_path / "b",
        batch_size=8,
        log=lambda s: None,
    )
    assert not first.finished and first.iterations == 7
    fresh_process_model = small_model(seed=123)  # a relaunch builds a new model; the checkpoint overrides it
    lines = []
    second = train(
        fresh_process_model,
        ToyStream(),
        eval_set(),
        TrainSettings(**SETTINGS),
        tmp_path / "b",
        batch_size=8,
        log=lines.append,
    )
    assert second.finished and "resuming" in lines[0] and "iteration 7" in lines[0]
    # Stopped between two log points (4 and 8) and between checkpoints: the same history, train loss included.
    assert second.history == straight_result.history
    assert [e["iteration"] for e in second.history if "train_loss" in e] == [4, 8, 12]
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), fresh_process_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_keyboard_interrupt_saves_a_checkpoint_to_resume_from(tmp_path):
    class Interrupting(ToyStream):
        def next_batch(self):
            if self.served == 5:
                raise KeyboardInterrupt
            return super().next_batch()

    with pytest.raises(KeyboardInterrupt):
        quiet_train(Interrupting(), TrainSettings(**SETTINGS), tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert state["iteration"] == 5 and state["learner"]["stream"]["served"] == 5


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poisoned(ToyStream):
        def next_batch(self):
            x, y = super().next_batch()
            return (x * float("nan"), y) if self.served == 8 else (x, y)

    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at iteration 7 \(not finite\).*last good checkpoint.*optim.lr="
    ):
        quiet_train(Poisoned(), TrainSettings(**SETTINGS), tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["learner"]["model"].values())


def test_an_exploding_loss_stops_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match="above max_loss"):
        quiet_train(ToyStream(), TrainSettings(**(SETTINGS | {"lr": 1e4, "max_loss": 50.0})), tmp_path)


def test_lr_schedule_and_localisation_multiplier():
    settings = TrainSettings(lr=0.01, lr_step_every=50_000, lr_gamma=0.1, localisation_lr_multiplier=0.1)
    assert settings.lr_at(0) == 0.01 and settings.lr_at(49_999) == 0.01
    assert settings.lr_at(50_000) == pytest.approx(0.001) and settings.lr_at(149_999) == pytest.approx(1e-4)
    model = small_model()
    optimizer = make_optimizer(model, settings)
    loc = {id(p) for p in model.transformer.localisation.parameters()}
    scales = {g["lr_scale"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert scales[0.1] == loc and not (scales[1.0] & loc)
    assert sum(len(v) for v in scales.values()) == len(list(model.parameters()))


def test_training_learns_the_toy_task(tmp_path):
    model = small_model()
    result = train(
        model,
        ToyStream(batch_size=32),
        eval_set(),
        TrainSettings(
            iterations=150, lr=0.05, lr_step_every=1000, log_every=1000, eval_every=0, checkpoint_every=0
        ),
        tmp_path,
        batch_size=32,
        log=lambda s: None,
    )
    assert result.errors["test"] < 50.0  # chance is 75%
    assert isinstance(model.classifier, nn.Module)


class CountingSyncs:
    """Counts how often the loop reads a tensor back to the host (``Tensor.tolist`` / ``Tensor.item``)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in ("tolist", "item"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.calls += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


class ReplayStream:
    """Serves batches made beforehand (so the stream itself reads nothing back to the host)."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def next_batch(self):
        self.served += 1
        return self.batches[self.served - 1]

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]


def test_losses_are_read_back_once_per_logging_window_not_every_step(tmp_path, monkeypatch):
    source = ToyStream()
    stream = ReplayStream([source.next_batch() for _ in range(40)])
    evaluation = eval_set()
    syncs = CountingSyncs(monkeypatch)
    settings = TrainSettings(
        iterations=40, lr=0.05, log_every=10, eval_every=0, checkpoint_every=0, picture_every=0
    )
    quiet_train(stream, settings, tmp_path, evaluation=evaluation)
    # 4 logging windows + the final evaluation (one read-back per evaluation set): not 40 per-step reads.
    assert syncs.calls == 5


def test_a_nan_between_checks_is_found_before_the_next_checkpoint(tmp_path):
    class Poisoned(ToyStream):
        def next_batch(self):
            x, y = super().next_batch()
            return (x * float("nan"), y) if self.served == 3 else (x, y)

    # The loss is read back every 100 steps, but a checkpoint is due at iteration 4: the check runs first.
    settings = TrainSettings(iterations=12, lr=0.05, log_every=100, eval_every=0, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at iteration 2 "):
        quiet_train(Poisoned(), settings, tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["iteration"] == 2


def test_an_interrupt_after_a_nan_raises_divergence_instead_of_saving_the_broken_state(tmp_path):
    class PoisonedThenInterrupted(ToyStream):
        def next_batch(self):
            if self.served == 5:
                raise KeyboardInterrupt
            x, y = super().next_batch()
            return (x * float("nan"), y) if self.served == 4 else (x, y)

    settings = TrainSettings(iterations=12, lr=0.05, log_every=100, eval_every=0, checkpoint_every=2)
    with pytest.raises(TrainingDiverged, match="iteration 3 "):
        quiet_train(PoisonedThenInterrupted(), settings, tmp_path)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["iteration"] == 2


def test_the_logged_loss_is_the_mean_over_the_window(tmp_path):
    lines = []
    settings = TrainSettings(iterations=4, lr=0.0, log_every=4, eval_every=0, checkpoint_every=0)
    model = small_model()
    train(model, ToyStream(), eval_set(), settings, tmp_path, batch_size=8, log=lines.append)
    # lr 0: the model does not change, so the window's mean is the mean loss of the same 4 batches.
    stream = ToyStream()
    with torch.no_grad():
        expected = (
            sum(
                torch.nn.functional.cross_entropy(model(x), y).item()
                for x, y in (stream.next_batch() for _ in range(4))
            )
            / 4
        )
    assert f"loss {expected:.4f}" in lines[0]


def test_a_checkpoint_of_another_format_or_model_count_is_refused_with_the_fix(tmp_path):
    settings = TrainSettings(iterations=2, lr=0.05, log_every=1, eval_every=0, checkpoint_every=0)
    torch.save({"iteration": 1, "model": {}}, tmp_path / CHECKPOINT_NAME)  # the version-1 layout
    with pytest.raises(ValueError, match=r"older version of stn-repro.*delete it"):
        quiet_train(ToyStream(), settings, tmp_path)
    (tmp_path / CHECKPOINT_NAME).unlink()
    quiet_train(ToyStream(), settings, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)
    torch.save(state | {"num_models": 3}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="holds 3 stacked model"):
        quiet_train(ToyStream(), settings, tmp_path)


def test_a_checkpoint_of_other_training_settings_is_refused_and_bookkeeping_may_change(tmp_path):
    settings = TrainSettings(**{**SETTINGS, "stop_after": 4})
    quiet_train(ToyStream(), settings, tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(lr 0.05 -> 0.1; lr_step_every 5 -> 6\)"):
        quiet_train(ToyStream(), TrainSettings(**{**SETTINGS, "lr": 0.1, "lr_step_every": 6}), tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).exists()  # refused, not overwritten
    resumed = quiet_train(
        ToyStream(), TrainSettings(**{**SETTINGS, "log_every": 2, "eval_every": 0}), tmp_path
    )
    assert resumed.finished and resumed.iterations == 12


def test_the_cosine_schedule_warms_up_then_falls_to_zero_at_the_last_iteration():
    settings = TrainSettings(iterations=1000, lr=0.1, lr_schedule="cosine", warmup_iterations=100)
    assert settings.lr_at(0) == pytest.approx(0.001) and settings.lr_at(99) == pytest.approx(0.1)
    assert settings.lr_at(100) == pytest.approx(0.1)
    assert settings.lr_at(550) == pytest.approx(0.05)  # half way through the decay: half the lr
    assert settings.lr_at(1000) == pytest.approx(0.0, abs=1e-12)
    decay = [settings.lr_at(i) for i in range(100, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    with pytest.raises(ValueError, match="lr_schedule must be one of step, cosine, got 'linear'"):
        TrainSettings(lr_schedule="linear")


def test_nesterov_reaches_the_optimiser_and_a_resume_with_another_schedule_is_refused(tmp_path):
    settings = TrainSettings(**{**SETTINGS, "nesterov": True, "lr_schedule": "cosine", "stop_after": 4})
    assert all(g["nesterov"] for g in make_optimizer(small_model(), settings).param_groups)
    quiet_train(ToyStream(), settings, tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(lr_schedule 'cosine' -> 'step'\)"):
        quiet_train(ToyStream(), TrainSettings(**{**SETTINGS, "nesterov": True}), tmp_path)


def test_the_history_holds_the_train_loss_at_every_log_point_and_the_errors_at_every_evaluation(tmp_path):
    result = quiet_train(ToyStream(), TrainSettings(**SETTINGS), tmp_path)
    by_iteration = {entry["iteration"]: entry for entry in result.history}
    assert sorted(by_iteration) == [4, 6, 8, 12]  # log_every 4, eval_every 6, the end
    assert all("train_loss" in by_iteration[i] and "lr" in by_iteration[i] for i in (4, 8, 12))
    assert all("test_error" in by_iteration[i] for i in (6, 12))
    assert by_iteration[12]["test_error"] == result.errors["test"]
    assert "train_loss" not in by_iteration[6]


def test_autocast_auto_is_bf16_on_a_cpu_with_native_bf16_only(tmp_path, monkeypatch):
    from stn_repro.training import settings

    amx, avx512_bf16, plain = tmp_path / "amx", tmp_path / "avx512_bf16", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    avx512_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")  # AMD Zen 4
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\nbugs\t\t: amx_bf16\n")
    assert settings.cpu_has_fast_bf16(amx) and settings.cpu_has_fast_bf16(avx512_bf16)
    assert settings.cpu_bf16_flags(amx) == ("amx_bf16",) and settings.cpu_bf16_flags(plain) == ()
    assert not settings.cpu_has_fast_bf16(plain)  # emulated bfloat16; a flag outside "flags" does not count
    assert not settings.cpu_has_fast_bf16(tmp_path / "absent")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for value in ("none", "bf16"):
        assert settings.resolve_autocast(value, cpu) == settings.resolve_autocast(value, cuda) == value
    monkeypatch.setattr(settings, "cpu_has_fast_bf16", lambda: True)
    assert (
        settings.resolve_autocast("auto", cpu) == "bf16" and settings.resolve_autocast("auto", cuda) == "none"
    )
    monkeypatch.setattr(settings, "cpu_has_fast_bf16", lambda: False)
    assert settings.resolve_autocast("auto", cpu) == "none"
    with pytest.raises(ValueError, match=r"trainer.autocast='fp16': use none, bf16, auto"):
        settings.resolve_autocast("fp16", cpu)
