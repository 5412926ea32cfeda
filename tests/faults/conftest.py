"""The fault-injection suite (``make test-faults``): one table row per scenario, printed at the end.

Each scenario injects one real fault (a signal to a task, the S3 server stopped and restarted, a full disk, a
registering process killed at a given request) into real components: the SeaweedFS server, the tiny models of
``tests/conftest.py``, the real steps. The suite is the ``faults`` tier (every test in this folder gets the
marker); ``make test`` leaves it out, ``make test-faults`` runs it alone.

A scenario reports its row through the ``fault_table`` fixture, once, when its checks have passed::

    def test_sigterm_then_resume(fault_table, ...):
        ...  # inject, run the retry, assert
        fault_table.add(
            scenario="1 SIGTERM mid-training",
            injected="SIGTERM at step 7 of 12",
            outcome="retry resumed from checkpoint-6",
            steps_redone=1,
            data_lost=0,
        )

``scenario``, ``injected`` and ``outcome`` are short texts; every other keyword is a figure (a number or a short
text) shown as ``name=value`` in the row, and the seconds since the fixture was set up are added as ``seconds``.
Common figure names, so that rows read alike: ``versions_registered``, ``steps_redone``, ``data_lost`` (objects
or rows lost; 0 is the point), ``retries``. A test that fails (or ends without calling ``add``) still gets a
row, with the outcome ``FAILED`` (or the reason of its ``xfail`` mark), so the table always has one row per
scenario run; set ``fault_table.scenario = "..."`` first to give that row its scenario's name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class FaultRow:
    scenario: str
    injected: str
    outcome: str
    figures: dict[str, Any]
    seconds: float


@dataclass
class FaultTable:
    """Every scenario's row (shown sorted by scenario, so that numbered names keep the issue's order)."""

    rows: list[FaultRow] = field(default_factory=list)
    started: float | None = None

    def render(self) -> str:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="fault-injection suite", show_lines=True)
        for column in ("scenario", "injected", "outcome", "figures", "s"):
            table.add_column(column, overflow="fold")
        for row in sorted(self.rows, key=lambda row: row.scenario):  # "1 ...", "2 ...", "3a ...": the order
            figures = "  ".join(f"{name}={value}" for name, value in row.figures.items())
            table.add_row(row.scenario, row.injected, row.outcome, figures, f"{row.seconds:.0f}")
        console = Console(width=160, record=True, force_terminal=False, color_system=None)
        with console.capture() as captured:
            console.print(table)
        return captured.get()


_TABLE = FaultTable()


class FaultRecorder:
    """What a scenario gets from the ``fault_table`` fixture: ``add(scenario=, injected=, outcome=, **figures)``."""

    def __init__(self, table: FaultTable, test_name: str) -> None:
        self.table = table
        self.test_name = test_name
        self.started = time.monotonic()
        self.added = False
        self.scenario: str | None = None  # the name of the row a failed (or xfail) test still gets

    def add(self, *, scenario: str, injected: str, outcome: str, **figures: Any) -> None:
        """Record this scenario's row (call it once, after the checks passed)."""
        self.table.rows.append(FaultRow(scenario, injected, outcome, figures, time.monotonic() - self.started))
        self.added = True


@pytest.fixture
def fault_table(request) -> FaultRecorder:
    """The suite's table; see the module docstring for how a scenario adds its row."""
    if _TABLE.started is None:
        _TABLE.started = time.monotonic()
    recorder = FaultRecorder(_TABLE, request.node.name)
    yield recorder
    if not recorder.added:
        expected = request.node.get_closest_marker("xfail")
        outcome = f"expected failure: {expected.kwargs.get('reason', '')}" if expected else "FAILED (no row recorded)"
        recorder.add(scenario=recorder.scenario or request.node.name, injected="-", outcome=outcome)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _TABLE.rows:
        return
    terminalreporter.write_sep("=", "fault-injection suite")
    terminalreporter.write(_TABLE.render())
    elapsed = time.monotonic() - (_TABLE.started or time.monotonic())
    terminalreporter.write_line(f"faults: {len(_TABLE.rows)} scenario(s) in {elapsed:.0f} s")
