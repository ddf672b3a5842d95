"""The tables committed in ``results/``, each with the records folder and profile it is made from.

``stn-table --committed`` (``make tables``) rebuilds every one of them from ``results/records`` into
``results/``; ``--check`` rebuilds them elsewhere and compares, byte for byte. A table made from one's own
runs (``runs/``) goes to ``runs/tables/`` instead, so that nothing a user runs can replace a committed table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommittedTable:
    experiment: str
    records: str  # relative to the project root, as the table's "Made by" line names it
    profile: str

    def arguments(self) -> list[str]:
        """The ``stn-table`` arguments that make it (the same as its "Made by" line, apart from ``--out``)."""
        experiment = [] if self.experiment == "mnist" else ["--experiment", self.experiment]
        return [*experiment, "--runs", self.records, "--profile", self.profile]


COMMITTED_TABLES = (
    # Table 1 of fast and paper from every records folder: the study sets and runs of other settings are
    # sections of the profile's table; quick from its own folder.
    CommittedTable("mnist", "results/records", "fast"),
    CommittedTable("mnist", "results/records", "paper"),  # also mnist_table1_paper_width_ranges
    CommittedTable("mnist", "results/records/mnist_quick", "quick"),
    CommittedTable("addition", "results/records/addition_fast", "fast"),
    CommittedTable("addition", "results/records/addition_paper", "paper"),
    CommittedTable("addition", "results/records/addition_quick", "quick"),
    CommittedTable("coloc", "results/records/coloc_fast", "fast"),
    CommittedTable(
        "coloc", "results/records/coloc_paper", "paper"
    ),  # the first e(): coloc_table5_paper_plain_e
    CommittedTable(
        "coloc", "results/records/coloc_paper_table1_e", "paper"
    ),  # the paper's e(): coloc_table5_paper
    CommittedTable("svhn", "results/records", "quick"),  # version 2 of the stand-in, version 1 set apart
    CommittedTable("cub", "results/records", "quick"),  # its rows and the control (records/cub_quick_control)
)
