"""The federated run's last phase: the final federated evaluation, then the shared summary
(``server.summary.write_summary``) with the fleet's figures."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from admp.masks import MaskDict
from server.clock import fleet_summary
from server.guards import student_flag
from server.phases import final_round
from server.session import Session
from server.summary import INFERENCE, write_summary


def _bytes_per_client_round(rows: list[dict[str, Any]], with_teacher: bool) -> float:
    """Mean (down + up) bytes per sampled device over the training rounds."""
    rows = [r for r in rows if r.get("bytes_down")]
    values: list[float] = [
        (r["bytes_down"] - (0 if with_teacher else r["bytes_down_teacher"]) + r["bytes_up"]) / max(r["clients"], 1)
        for r in rows
    ]
    return sum(values) / max(len(values), 1)


def _privacy_summary(session: Session) -> dict[str, Any] | None:
    """The run's DP figures (epsilon at delta, z, clip, releases), and where training stopped for the
    budget; None without ``federation.privacy``."""
    privacy = session.fleet.privacy
    if privacy is None:
        return None
    return privacy.summary() | {"stopped_before_round": session.runner.privacy_stop}


def finish(
    session: Session, model: nn.Module, keep: MaskDict | None, quantization: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Final federated evaluation (under the run's BN mode), export and summary; marks the run done.
    ``quantization``: what ``server.quantize_phase`` did (the model's weights are on its levels)."""
    run, fed = session.run, session.run.cfg.federation
    rnd = final_round(run)
    probe = session.kd_strategy(model.state_dict(), keep)
    local = fed.bn_recalibration == "local"
    accs = session.runner.evaluate_all(probe, rnd, model.state_dict(), local_bn=local)
    acc = accs.get("accuracy")
    as_exported = accs.get("accuracy-as-exported") if local else acc
    run.run_dir.log_metrics({"phase": "final", "step": rnd, "round": rnd, "target_acc": acc})
    delivery = session.fleet.delivery
    label_free = student_flag(run.teacher_info.get("label_free_score"), accs.get("label-free-score"))
    fields = {
        "mode": "federated",
        "strategy": fed.strategy,
        "prune_ratio": run.cfg.admp.ratio() if keep else 0.0,  # per group under a latency plan
        "devices": len(session.fleet.roster),
        "nodes": session.fleet.roster.node_count(),  # the Flower nodes that carried them (simulation slots)
        "student": {
            "target_acc": acc,  # over every test sample: the example-weighted mean of the devices' claims
            "target_acc_robust": accs.get("accuracy-robust"),  # their accuracies combined by the mode (not mean)
            "inference": INFERENCE[fed.bn_recalibration],
            "target_acc_as_exported": as_exported,
            "candidate": session.selection.get("chosen"),  # the label-free choice (server.selection)
            "evaluated_devices": accs.get("evaluated_devices"),  # the sample the accuracy is over (eval_clients)
            "evaluated_examples": accs.get("evaluated_examples"),
        },
        "label_free": label_free,
        "selection": session.selection,  # every candidate's label-free score (and accuracy, reported only), why
        "first_round_at": session.runner.first_round_at,
        "bytes_per_client_round": _bytes_per_client_round(run.run_dir.rows, with_teacher=True),
        "bytes_per_client_round_without_teacher": _bytes_per_client_round(run.run_dir.rows, with_teacher=False),
        "dense_student_bytes": delivery.teacher.count_bytes(),
        "teacher_sends": {str(k): v for k, v in sorted(delivery.sends.items())},
        "rejected_replies": len(session.fleet.rejections),
        "rejections": [dataclasses.asdict(r) for r in session.fleet.rejections],
        "aggregation": fed.robust.aggregation,
        "fleet_clock": fleet_summary(run.run_dir.rows, run.run_dir.file("accuracy_vs_fleet_time.png")),
        "faults": fed.faults.model_dump() if fed.faults.active else None,
        "privacy": _privacy_summary(session),
    }
    if label_free["below_start_warning"]:
        run.console.print("[yellow]warning: the student's label-free score is worse than the teacher's at the start")
    title = f"Federated {fed.strategy} on {run.task.name}"
    summary = write_summary(run, model, keep, fields, title, x_key="round", quantization=quantization)
    run.save_checkpoint("done", rnd, model.state_dict(), keep=keep or {})
    return summary
