"""Studies of finished runs, each a command: :mod:`.rescore` (``stn-rescore``: a run's weights scored on
today's stored test set), :mod:`.error_by_distortion`, :mod:`.val_vs_test`, :mod:`.localisation_spread`,
:mod:`.coloc_boxes` and :mod:`.coloc_landscape` (co-localisation), :mod:`.cub_parts` and
:mod:`.svhn_windows` (their shared command line: :mod:`.run_report`), :mod:`.params`.
"""
