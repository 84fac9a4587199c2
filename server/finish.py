"""The end of a run, shared by the centralized and the federated run: export, measure, summarise.

``write_summary`` exports the pruned student (TorchScript + ONNX, checked in ONNX Runtime),
measures teacher and student (parameters, MACs, channels, latency), and writes ``summary.json``,
the training plot and the summary table. ``finish`` is the federated run's last phase: the final
federated evaluation, then ``write_summary`` with the fleet's figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from server.export import export_and_measure
from server.phases import Session, final_round
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


def _bytes_per_client_round(rows: list[dict[str, Any]], with_teacher: bool) -> float:
    """Mean (down + up) bytes per sampled device over the training rounds."""
    rows = [r for r in rows if r.get("bytes_down")]
    values = [
        (r["bytes_down"] - (0 if with_teacher else r["bytes_down_teacher"]) + r["bytes_up"]) / max(r["clients"], 1)
        for r in rows
    ]
    return sum(values) / max(len(values), 1)


def finish(session: Session, model: nn.Module, keep: dict[str, Any] | None) -> dict[str, Any]:
    """Final federated evaluation (under the run's BN mode), export and summary; marks the run done."""
    run, fed = session.run, session.run.cfg.federation
    rnd = final_round(run)
    probe = session.kd_strategy(model.state_dict(), keep)
    acc = session.runner.evaluate(probe, rnd, model.state_dict(), local_bn=fed.bn_recalibration == "local")
    run.run_dir.log_metrics({"phase": "final", "step": rnd, "round": rnd, "target_acc": acc})
    delivery = session.fleet.delivery
    fields = {
        "mode": "federated",
        "strategy": fed.strategy,
        "prune_ratio": run.cfg.admp.prune_ratio if keep else 0.0,
        "devices": len(session.fleet.devices),
        "student": {"target_acc": acc},
        "first_round_at": session.runner.first_round_at,
        "bytes_per_client_round": _bytes_per_client_round(run.run_dir.rows, with_teacher=True),
        "bytes_per_client_round_without_teacher": _bytes_per_client_round(run.run_dir.rows, with_teacher=False),
        "dense_student_bytes": delivery.teacher.count_bytes(),
        "teacher_sends": {str(k): v for k, v in sorted(delivery.sends.items())},
        "rejections": [dataclasses.asdict(r) for r in session.fleet.rejections],
    }
    summary = write_summary(run, model, fields, f"Federated {fed.strategy} on {run.task.name}", x_key="round")
    run.save_checkpoint("done", rnd, model.state_dict(), keep=keep or {})
    return summary
