"""Experiment tracking: Weights & Biases when enabled, nothing otherwise (same calls either way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class TrackerError(ValueError):
    """A tracker that cannot start (W&B online without a login): the message names the fix."""


class Tracker:
    """Does nothing: the interface the training code calls."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int | None = None, caption: str | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run. ``mode="offline"`` writes under ``dir`` for a later ``wandb sync``. Quiet in the terminal
    (W&B's banners and sync messages off, ``WANDB_SILENT=false`` brings them back); the run logs the same.

    ``reinit`` is W&B's policy for a run started while another is live in this process:
    ``"finish_previous"`` (one run at a time, the single-seed runner) or ``"create_new"`` (several live runs
    side by side, e.g. one per seed of a stacked run; W&B >= 0.19).
    """

    def __init__(
        self,
        *,
        project: str,
        name: str,
        config: dict[str, Any],
        dir: Path,
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        reinit: str = "finish_previous",
    ):
        import wandb  # imported here: a run without W&B never pays for it

        self._wandb = wandb
        Path(dir).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                group=group,
                tags=tags,
                config=config,
                dir=str(dir),
                mode=mode,
                reinit=reinit,
                settings=wandb.Settings(silent=os.environ.get("WANDB_SILENT", "true").lower() != "false"),
            )
        except wandb.errors.UsageError as error:  # e.g. online without a login: W&B's own words, then the fix
            raise TrackerError(
                f"W&B cannot start the run ({str(error).strip()}): run `wandb login` (or set WANDB_API_KEY), "
                "or log offline (WANDB_MODE=offline, the default; `wandb sync` uploads later), or not at all "
                "(logger=none)"
            ) from None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path: Path, step: int | None = None, caption: str | None = None) -> None:
        self.run.log({key: self._wandb.Image(str(path), caption=caption)}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({key: self._wandb.Table(columns=columns, data=rows)})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        self.run.finish()
