"""The paper's tables from run records: :mod:`.aggregate` (records -> rows), one Markdown writer per table
(:mod:`.mnist`, :mod:`.svhn`, :mod:`.cub`, :mod:`.addition`, :mod:`.coloc`) over the shared pieces of
:mod:`.markdown`, :mod:`.write` (CSV and Markdown files), :mod:`.tuning` (the tuning tables) and the
command, :mod:`.cli` (``stn-table``).
"""
