"""Keeping track of runs: which (cell, seed) each table still lacks and what recipe each profile composes
(:mod:`.missing`, ``stn-missing``), and parking unfinished runs in the repository between sessions
(:mod:`.park`, ``stn-park``).
"""
