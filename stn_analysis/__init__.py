"""stn-repro's analysis: everything made *from* run records, apart from the library that makes them.

- :mod:`.tables`: the paper's tables (Markdown and CSV) from records, against the paper's numbers
  (``stn-table``), and the tuning tables;
- :mod:`.diagnostics`: studies of trained runs (rescoring on today's sets, error by distortion strength,
  validation against test, localisation spread, co-localisation boxes and loss landscapes, CUB parts,
  parameter counts);
- :mod:`.bookkeeping`: which runs a table still lacks (``stn-missing``), the recipe each profile composes,
  and parking unfinished runs between sessions (``stn-park``).

It depends on :mod:`stn_repro` only (never on ``experiments/``); its commands run from any folder and find
the checkout's configs and records through :mod:`.paths`.
"""
