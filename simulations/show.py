"""``fedadmp show RUN_DIR``: a finished run's summary and its per-round table, from the files alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from server.report import print_summary
from simulations.api import show


def _number(digits: int, scale: float = 1.0) -> Callable[[Any], str]:
    """A cell for a number shown with ``digits`` decimals after dividing by ``scale``."""
    return lambda v: f"{v / scale:.{digits}f}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def _text(value: Any) -> str:
    return str(len(value)) if isinstance(value, list | dict) else str(value)


# (metrics key, column, cell): the columns a reader scans first; a column no row has is left out, and of
# round / step / epoch only the first that some row has (federated runs count rounds, centralized epochs)
COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("phase", "phase", _text),
    ("round", "round", _text),
    ("step", "step", _text),
    ("epoch", "epoch", _text),
    ("target_acc", "acc %", _number(2)),
    ("label_free_score", "label-free", _number(3)),
    ("divergence", "D", _number(3)),
    ("valid_replies", "ok", _number(0)),
    ("hard_sparsity", "Z=0", _number(2)),
    ("bytes_up", "up MB", _number(2, 1e6)),
    ("round_seconds", "s", _number(1)),
)
COUNTERS = ("round", "step", "epoch")


def metrics_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The per-round rows under the columns some row has."""
    columns = [c for c in COLUMNS if any(isinstance(r, dict) and r.get(c[0]) not in (None, "") for r in rows)]
    counters = [c for c in columns if c[0] in COUNTERS]
    columns = [c for c in columns if c[0] not in COUNTERS or c is counters[0]]
    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="left" if header == "phase" else "right")
    for row in rows:
        if isinstance(row, dict):
            table.add_row(*("" if row.get(key) in (None, "") else fmt(row[key]) for key, _, fmt in columns))
    return table


def print_run(run_dir: Path, rows: int = 40, console: Console | None = None) -> None:
    """Print the summary table of ``run_dir`` and the last ``rows`` metrics rows (0: all)."""
    console = console or Console()
    run = show(run_dir)
    summary, metrics = run["summary"], run["metrics"]
    shown = metrics[-rows:] if rows > 0 else metrics
    console.print(metrics_table(shown, "metrics.json"))
    if len(shown) < len(metrics):
        console.print(f"the last {len(shown)} of {len(metrics)} rows (--rows 0: all)")
    title = f"{summary.get('mode', 'run')} {summary.get('strategy', '')} on {summary.get('dataset', '?')}"
    print_summary(summary, title.replace("  ", " "), console)
