"""The keys a runner's config knows, so that a key it does not know is one ``error:`` line naming the nearest
one it does, not a value that is stored and never read.

Hydra refuses an unknown key given plainly (``trainer.lr=-1``) with "use +trainer.lr=-1", which is the wrong
way: the learning rate is ``optim.lr``. With ``+`` (or ``++``) it adds the key, which no code reads. Both end
here: :func:`unknown_key_line` for the first (while Hydra composes), :func:`check_added_keys` for the second
(before the job does anything). A key the runners read where a config gives it, but no config needs to
(:data:`OPTIONAL_KEYS`), may be added with ``+``.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Read with a default where a config lacks them (experiments/*.py); `+key=value` sets them.
OPTIONAL_KEYS = (
    "optim.lr_steps",
    "optim.warmup_iterations",
    "optim.lr_schedule",
    "optim.nesterov",
    "trainer.localisation_lr_multiplier_by_cell",  # and any cell below it
    "trainer.embedding.optim",
    "model.tiling",
    "model.loc_channels",
    "model.loc_hidden",
)


def flat_keys(node: Any, prefix: str = "") -> set[str]:
    """Every dotted key of a config (dict) and of the dicts in it, without resolving interpolations."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    keys = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.add(path)
            keys |= flat_keys(value, path + ".")
    return keys


def is_optional(key: str) -> bool:
    return any(key == known or key.startswith(known + ".") for known in OPTIONAL_KEYS)


def nearest(key: str, known: set[str]) -> str | None:
    """The known key the user most likely meant: the same last part under another group (``trainer.lr`` ->
    ``optim.lr``), else the closest spelling."""
    known = {k for k in known if not any(other.startswith(k + ".") for other in known)}  # values, not groups
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = sorted(
        (k for k in known if k.rsplit(".", 1)[-1] == leaf and not k.startswith("hydra.")),
        key=lambda k: (k.count("."), k),  # the shallowest: optim.lr before embedding.optim.lr
    )
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_message(key: str, known: set[str], runner: str) -> str:
    guess = nearest(key, known)
    hint = f"did you mean {guess}?" if guess else "it is not a key of this runner's config"
    return (
        f"{key} is not a config key: {hint} (`python -m experiments.{runner} --cfg job` lists every key; "
        "`+key=value` adds only the keys a runner reads where a config gives them)"
    )


def runner_name() -> str:
    """The running runner's config name: ``experiments.<name>`` runs ``configs/<name>.yaml``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name.rsplit(".", 1)[-1] if spec is not None and spec.name else "mnist"


def unknown_key_line(error: Exception) -> str | None:
    """For Hydra's "Could not override '<key>'" (an unknown key given without ``+``): the line naming the
    nearest known key; ``None`` for any other error."""
    match = re.search(r"Could not override '([^']+)'", str(error))
    if match is None:
        return None
    key, runner = match.group(1), runner_name()
    if is_optional(key):
        return f"{key} is not set by this config; add it with +{key}=<value>"
    overrides = [a for a in sys.argv[1:] if not a.startswith("-") and a.split("=", 1)[0].lstrip("+~") != key]
    return unknown_key_message(key, composed_keys(runner, overrides), runner)


def composed_keys(runner: str, overrides: list[str]) -> set[str]:
    """The keys of ``configs/<runner>.yaml`` composed with ``overrides`` (those that compose at all)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    usable = [o for o in overrides if "=" in o and not o.startswith(("hydra", "+", "~"))]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        try:
            cfg = compose(runner, overrides=usable)
        except Exception:  # another bad override among them: the defaults' keys still say what exists
            cfg = compose(runner)
    return flat_keys(cfg)


def check_added_keys(cfg: DictConfig, task_overrides: list[str]) -> None:
    """Raise ``ValueError`` naming the nearest known key for an override that added (``+``/``++``) a key no
    config of this runner has and no runner reads (:data:`OPTIONAL_KEYS` may be added)."""
    added = [o.lstrip("+").split("=", 1)[0] for o in task_overrides if o.startswith("+")]
    added = [key for key in added if "/" not in key and not key.startswith("hydra")]  # not a config group
    unknown = [key for key in added if not is_optional(key)]
    if not unknown:
        return
    known = flat_keys(cfg) - {k for key in unknown for k in flat_keys_below(key, cfg)}
    raise ValueError(unknown_key_message(unknown[0], known, runner_name()))


def flat_keys_below(key: str, cfg: DictConfig) -> set[str]:
    """``key`` and every key below it in ``cfg`` (what a ``+key=...`` override added)."""
    node = OmegaConf.select(cfg, key)
    return {key} | flat_keys(node, key + ".")
