"""The end of a run, shared by the centralized and the federated run: export, measure, summarise.

``write_summary`` exports the pruned student (TorchScript + ONNX, checked in ONNX Runtime),
measures teacher and student (parameters, MACs, channels, latency), and writes ``summary.json``,
the training plot and the summary table. It imports no Flower, so the centralized run loads none.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from server.export import export_and_measure
from server.report import print_summary
from server.setup import RunSetup


def write_summary(
    run: RunSetup,
    student: nn.Module,
    fields: dict[str, Any],
    title: str,
    x_key: str = "step",
    exports: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Export and measure ``student``, merge in ``fields`` (with ``teacher`` / ``student`` sub-dicts
    merged key by key), and write the summary, the plot and the table. ``exports`` lists other
    artefacts of the run directory that the summary names."""
    report = export_and_measure(run.run_dir, run.teacher, student, run.groups, run.task.source_val.x[:32])
    report["exports"] += list(exports)
    summary: dict[str, Any] = {
        "run_dir": str(run.run_dir.path),
        "dataset": run.task.name,
        "arch": run.arch,
        "seed": run.cfg.run.seed,
        **report,
    }
    for key, value in fields.items():
        summary[key] = summary[key] | value if isinstance(value, dict) and key in ("teacher", "student") else value
    summary["teacher"] |= {k: v for k, v in run.teacher_info.items() if k != "final_loss"}
    teacher, pruned = summary["teacher"], summary["student"]
    summary["channels_pruned"] = 1 - sum(pruned["channels"].values()) / sum(teacher["channels"].values())
    summary["param_reduction"] = teacher["params"] / pruned["params"]
    summary["mac_reduction"] = teacher["macs"] / pruned["macs"]
    summary["wall_seconds"] = run.seconds()
    run.run_dir.write_json("summary.json", summary)
    run.run_dir.plot_training(x_key=x_key)
    print_summary(summary, title, run.console)
    return summary
