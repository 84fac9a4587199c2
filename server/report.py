"""A run's directory: resolved config, per-epoch/round metrics (CSV + JSON), summary, plots."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table


class RunDirectory:
    """Creates ``out_dir/name-YYYYmmdd-HHMMSS[-n]`` and writes a run's artefacts into it.

    Metrics are rewritten in full after every row, so an interrupted run keeps what it measured.
    """

    def __init__(self, out_dir: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir).resolve() / f"{name}-{stamp}"
        path, n = base, 1
        while path.exists():
            path, n = Path(f"{base}-{n}"), n + 1
        path.mkdir(parents=True)
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.tracker: Callable[[dict[str, Any]], None] | None = None  # run.tensorboard: server.tracking

    @classmethod
    def reopen(cls, path: str | Path, keep_rows: int | None = None) -> RunDirectory:
        """An existing run directory (to resume it), with its metrics rows reloaded.

        ``keep_rows`` truncates the rows to those the checkpoint covers.
        """
        run = cls.__new__(cls)
        run.tracker = None
        run.path = Path(path).resolve()
        if not run.path.is_dir():
            raise FileNotFoundError(f"{run.path}: run directory not found")
        metrics = run.path / "metrics.json"
        run.rows = json.loads(metrics.read_text()) if metrics.is_file() else []
        if keep_rows is not None:
            run.rows = run.rows[:keep_rows]
        return run

    def file(self, name: str) -> Path:
        """Path of an artefact inside the run directory."""
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        """Write a text artefact (e.g. the resolved config)."""
        target = self.file(name)
        target.write_text(text)
        return target

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON artefact."""
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one metrics row and rewrite metrics.csv and metrics.json."""
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        with self.file("metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        self.write_json("metrics.json", self.rows)
        if self.tracker is not None:
            self.tracker(row)

    def plot_training(self, x_key: str = "step", name: str = "training.png") -> Path:
        """Target accuracy and mask sparsity against ``x_key`` (one line per phase)."""
        fig, (ax_acc, ax_sp) = plt.subplots(1, 2, figsize=(11, 4))
        phases = list(dict.fromkeys(r["phase"] for r in self.rows))
        for phase in phases:
            rows = [r for r in self.rows if r["phase"] == phase and r.get("target_acc") is not None]
            if not rows:
                continue
            ax_acc.plot([r[x_key] for r in rows], [r["target_acc"] for r in rows], "o-", label=phase)
        for key, label in (
            ("soft_sparsity", "m < 0.5"),
            ("hard_sparsity", "Z = 0 (pruned)"),
            ("channels_pruned", "channels removed"),
        ):
            rows = [r for r in self.rows if r.get(key) is not None]
            if rows:
                ax_sp.plot([r[x_key] for r in rows], [r[key] for r in rows], "o-", label=label)
        ax_acc.set(xlabel=x_key, ylabel="target test accuracy (%)", title="Accuracy")
        ax_sp.set(xlabel=x_key, ylabel="fraction of channels", title="Sparsity", ylim=(-0.02, 1.02))
        for ax in (ax_acc, ax_sp):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a phase-less run (e.g. only merge rows) has no line
                ax.legend()
        fig.tight_layout()
        target = self.file(name)
        fig.savefig(target, dpi=110)
        plt.close(fig)
        return target


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """A rich table of teacher vs pruned student: accuracy, channels, parameters, MACs, latency."""
    table = Table(title=title)
    table.add_column("model")
    for col in ("target acc %", "channels", "params", "MACs", "latency b1 ms"):
        table.add_column(col, justify="right")
    for key in ("teacher", "student"):
        m = summary[key]
        table.add_row(
            key,
            "-" if m.get("target_acc") is None else f"{m['target_acc']:.2f}",
            str(sum(m["channels"].values())),
            f"{m['params']:,}",
            f"{m['macs']:,}",
            f"{m['latency_ms']:.3f}",
        )
    return table


def print_summary(summary: dict[str, Any], title: str, console: Console | None = None) -> None:
    """Print the summary table and the per-group channel counts."""
    console = console or Console()
    console.print(summary_table(summary, title))
    kept = ", ".join(f"{g}: {summary['student']['channels'][g]}/{c}" for g, c in summary["teacher"]["channels"].items())
    console.print(f"channels kept per group: {kept}")
    student = summary["student"]
    if student.get("inference") and student.get("target_acc") is None:
        console.print("no accuracy: evaluation without labels (federation.evaluate_labels / evaluate-labels)")
    elif student.get("inference"):
        console.print(f"deployed accuracy {student['target_acc']:.2f}%: {student['inference']}")
        exported = student.get("target_acc_as_exported")
        if exported is not None and exported != student["target_acc"]:
            console.print(f"pruned_model.onnx as exported, without the device step: {exported:.2f}%")
    storage = summary.get("storage")
    if storage:  # what the exported file stores, against the dense float32 model
        console.print(
            f"pruned_model.onnx: {storage['weights']} weights, {storage['model_bytes'] / 1e3:.1f} kB of tensors "
            f"({storage['byte_reduction']:.1f}x fewer than the dense float32 model)"
        )
    privacy = summary.get("privacy")
    if privacy:
        console.print(
            f"privacy ({privacy['mode']}): epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:.2g} over "
            f"{privacy['releases']} rounds (z {privacy['noise_multiplier']}, clip {privacy['clip']})"
        )
    console.print(f"run directory: {summary['run_dir']}")
