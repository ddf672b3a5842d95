"""What each profile trains, as its configs compose it: the recipe a finished run is compared with.

A profile is ``configs/profile/<name>.yaml`` (what it means for every task) and
``configs/profile/<task>/<name>.yaml`` (what it trains for one task: length, batch, cadence, optimiser and
model values where they differ from the paper's); MNIST addition uses distorted MNIST's (``mnist``). A
record is its profile's run only if its optimiser settings and training length are what its profile
composes for its cell today (:func:`profile_optims`); the tables set the others apart and ``stn-missing``
does not count them.
"""

from __future__ import annotations

from pathlib import Path

from stn_analysis.paths import CONFIGS, check_checkout
from stn_analysis.records import record_cell
from stn_analysis.tables.aggregate import recipe_deviation

# The folder of configs/profile/ that holds a task's recipes (addition trains with Table 1's).
PROFILE_FOLDER = {"mnist": "mnist", "addition": "mnist", "svhn": "svhn", "cub": "cub", "coloc": "coloc"}


def profile_config(experiment: str, profile: str) -> Path:
    """``configs/profile/<task>/<profile>.yaml``: what ``profile`` trains for ``experiment``."""
    return CONFIGS / "profile" / PROFILE_FOLDER[experiment] / f"{profile}.yaml"


def known_profiles(experiment: str) -> list[str]:
    """The profiles ``experiment`` has a recipe for, sorted."""
    check_checkout()
    return sorted(p.stem for p in (CONFIGS / "profile" / PROFILE_FOLDER[experiment]).glob("*.yaml"))


def check_profile(experiment: str, profile: str) -> None:
    """Raise ``ValueError`` naming the known profiles where ``experiment`` has none called ``profile``."""
    known = known_profiles(experiment)
    if profile not in known:
        raise ValueError(
            f"no {experiment} profile {profile!r} ({profile_config(experiment, profile).relative_to(CONFIGS.parent)}); "
            f"known: {', '.join(known)}"
        )


def coloc_embedding_dir(profile: str) -> tuple[str, Path]:
    """The co-localisation embedding e() of ``profile``: its kind (``table1``: a finished Table 1 CNN run;
    ``plain``: a run the first job trains) and configs/coloc.yaml's ``embedding.run_dir``, composed as
    ``python -m experiments.coloc`` would (real MNIST, the default embedding, $STN_RUNS)."""
    from hydra import compose, initialize_config_dir

    check_checkout()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("coloc", overrides=[f"profile={profile}"])
    return str(cfg.embedding.kind), Path(cfg.embedding.run_dir)


def profile_optims(experiment: str, records: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(experiment, profile, cell) -> the ``optim`` settings (and ``trainer.iterations``,
    ``trainer.batch_size``) that ``profile=<profile>`` composes for that cell of ``experiment``
    (configs/<experiment>.yaml with ``cell=<cell>``: a profile may set a value per cell, as `fast` does the
    localisation lr of the TC cells), for each record's profile that the experiment has; for
    co-localisation the length only. The tables set runs of other settings apart
    (:func:`stn_analysis.tables.aggregate.aggregate`)."""
    # Co-localisation: no optimiser settings of a cell's own to compare, only the length.
    coloc = experiment == "coloc"
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    check_checkout()
    optims = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for profile, cell in sorted({(r["profile"], record_cell(r)) for r in records if record_cell(r)}):
            if profile_config(experiment, profile).exists():
                cfg = compose(
                    experiment, overrides=[f"profile={profile}", *([] if coloc else [f"cell={cell}"])]
                )
                optims[(experiment, profile, cell)] = {
                    **({} if coloc else OmegaConf.to_container(cfg.optim, resolve=True)),
                    # the training's length (stn_analysis.tables.aggregate.TRAINER_LENGTH_KEYS)
                    "trainer.iterations": cfg.trainer.iterations,
                    "trainer.batch_size": cfg.trainer.batch_size,
                }
    return optims


# (experiment, profile, cell) -> what profile_optims composed for it (None: nothing to compare with), so
# that each cell is composed once per process however many records ask.
_COMPOSED_OPTIMS: dict[tuple[str, str, str | None], dict | None] = {}


def other_settings(experiment: str, profile: str):
    """A function of a finished record: the optimiser settings or training length in which it departs from
    what ``profile`` composes for its cell (``"key=value, ..."``; ``""`` where it follows them). It is not the
    profile's run (the tables show it apart), so it does not count as done."""

    def deviation(record: dict) -> str:
        key = (experiment, profile, record_cell(record))
        if key not in _COMPOSED_OPTIMS:
            found = profile_optims(experiment, [{"profile": profile, "cell": key[2]}]) if key[2] else {}
            _COMPOSED_OPTIMS[key] = found.get(key)
        return recipe_deviation(record, _COMPOSED_OPTIMS[key])

    return deviation
