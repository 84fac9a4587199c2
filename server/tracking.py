"""An optional TensorBoard log of a run's metrics rows (``run.tensorboard``), offline, beside the CSV/JSON.

Every row ``RunDirectory.log_metrics`` writes also goes here: each finite number becomes the scalar
``<key>/<phase>`` at the row's ``step`` (rounds for federated runs, epochs for centralized ones), so
that one chart shows a metric across the phases. ``tensorboard --logdir RUN_DIR/tensorboard`` shows it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COUNTERS = ("step", "round", "epoch")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's finite numbers (not its counters, not booleans) as ``<key>/<phase>`` tags."""
    phase = str(row.get("phase", "run"))
    return {
        f"{key}/{phase}": float(value)
        for key, value in row.items()
        if key not in COUNTERS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardLog:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``folder``, fed one metrics row at a time."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked in the config)

        self.writer = SummaryWriter(log_dir=str(folder))
        self.rows = 0

    def __call__(self, row: dict[str, Any]) -> None:
        """Write the row's scalars at its step and flush, so an interrupted run keeps what it logged."""
        self.rows += 1
        step = next((row[k] for k in COUNTERS if isinstance(row.get(k), int)), self.rows)
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
