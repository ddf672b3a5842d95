"""stn-repro: a faithful, fast reproduction of Spatial Transformer Networks (Jaderberg et al., NIPS 2015).

The library, in layers (each imports only those below it; ``make lint`` holds it to that):

- :mod:`stn_repro.tasks`: one module per experiment of the paper (spec of one seed -> a prepared run);
- :mod:`stn_repro.training`: the engine every task shares (settings, learners, the loop, checkpoints, run
  folders, weights, records, :func:`~stn_repro.training.runs.run_seed`);
- :mod:`stn_repro.models` and :mod:`stn_repro.data`: the networks, and the data sets with their streams;
- :mod:`stn_repro.viz`, :mod:`stn_repro.tracking`, :mod:`stn_repro.paper`: pictures, W&B, the paper's numbers;
- :mod:`stn_repro.transformers`: the spatial transformer itself (families, grids, sampler, localisation);
- :mod:`stn_repro.io`, :mod:`stn_repro.seeding`: atomic writes and checksums, derived seeds.

It takes explicit arguments and knows nothing of Hydra: the runners in ``experiments/`` translate configs.
The analysis of finished runs is :mod:`stn_analysis`, beside it.
"""

__version__ = "0.1.0"
