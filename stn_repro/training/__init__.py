"""The training engine, the same for every experiment: what a run is told (:mod:`.settings`), what it drives
(:mod:`.learners`, with :mod:`.stacked` and :mod:`.data_parallel` for several models or processes), the
explicit loop (:mod:`.loop`), checkpoints, run folders, weights and records, and the single-seed job every
task hands its :class:`~stn_repro.training.runs.PreparedRun` to (:func:`~stn_repro.training.runs.run_seed`).

It knows no data set, model or task, and nothing of Hydra.
"""
