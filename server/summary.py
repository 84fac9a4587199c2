"""The end of a run, shared by the centralized and the federated run: export, measure, summarise.

``write_summary`` exports the pruned student (TorchScript + ONNX, checked in ONNX Runtime),
measures teacher and student (parameters, MACs, channels, latency), and writes ``summary.json``,
the training plot and the summary table. It imports no Flower, so the centralized run loads none.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from admp.masks import MaskDict
from admp_data.tasks import input_preprocessing
from admp_export.bundle import model_contract, save_bundle
from server.export import export_and_measure
from server.guards import ADAPTED_MARGIN, below_adapted_teacher
from server.report import print_summary
from server.setup import RunSetup

INFERENCE = {  # how a device runs the exported model, per federation.bn_recalibration
    "local": "per-device BN re-estimation on local unlabeled data (fedadmp adapt-bn), then pruned_model.onnx",
    "global": "pruned_model.onnx as exported (BN statistics pooled over the fleet)",
    "none": "pruned_model.onnx as exported (FedAvg'd BN statistics)",
}


LATENCY_TOLERANCE = 0.10  # a plan meets its budget when the exported model is within 10 % over it


def latency_check(run: RunSetup, exported_ms: dict[str, float]) -> dict[str, Any]:
    """The run's latency plan with the exported model's own latency beside its budget: met when each batch
    is at most ``LATENCY_TOLERANCE`` over it."""
    plan: dict[str, Any] = json.loads(run.run_dir.file("latency_plan.json").read_text(encoding="utf-8"))
    budget = plan["budget_ms"]
    over = {k: exported_ms[k] / budget[k] - 1.0 for k in budget}
    plan.pop("steps", None)
    return plan | {
        "exported_ms": exported_ms,
        "over_budget": over,
        "met": all(v <= LATENCY_TOLERANCE for v in over.values()),
    }


def write_summary(
    run: RunSetup,
    student: nn.Module,
    keep: MaskDict | None,
    fields: dict[str, Any],
    title: str,
    x_key: str = "step",
    exports: tuple[str, ...] = (),
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export (TorchScript, ONNX and the ``pruned_model.pt`` bundle that ``fedadmp adapt-bn`` reads)
    and measure ``student`` (pruned to ``keep``; None: dense), merge in ``fields`` (``teacher`` /
    ``student`` sub-dicts key by key), and write the summary, the plot and the table. ``exports``
    lists other artefacts of the run directory that the summary names; ``quantization`` (from
    ``server.quantize_phase``, its ``bits`` per weight) makes ``pruned_model.onnx`` the integer artefact."""
    bits = (quantization or {}).get("bits")
    report = export_and_measure(run.run_dir, run.teacher, student, run.groups, run.task.source_val.x[:32], bits)
    weight_bits = dict(bits or {})
    save_bundle(
        run.run_dir.file("pruned_model.pt"),
        run.arch,
        run.task.num_classes,
        run.cfg.model.width,
        keep,
        student,
        weight_bits,
    )
    source = run.task.source_train.x
    step = "adapt-bn" if run.cfg.federation.bn_recalibration == "local" else "none"
    value_range = (float(source.min()), float(source.max()))
    prep = input_preprocessing(run.cfg.data)
    contract = model_contract(student, run.task.num_classes, value_range, step, "pruned_model.onnx", prep)
    contract["weights"] = report["storage"]["weights"]
    run.run_dir.write_json("pruned_model.json", contract)
    report["exports"] += ["pruned_model.pt", "pruned_model.json", *exports]
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
    if quantization:
        summary["quantization"] = quantization
    if run.run_dir.file("latency_plan.json").is_file():
        summary["latency_plan"] = latency_check(run, report["storage"]["onnx_latency_ms"])
    teacher, pruned = summary["teacher"], summary["student"]
    summary["channels_pruned"] = 1 - sum(pruned["channels"].values()) / sum(teacher["channels"].values())
    summary["param_reduction"] = teacher["params"] / pruned["params"]
    summary["mac_reduction"] = teacher["macs"] / pruned["macs"]
    summary["wall_seconds"] = run.seconds()
    summary["below_adapted_teacher"] = check = below_adapted_teacher(teacher, pruned)
    if check and check["warning"]:
        run.console.print(
            f"[yellow]warning: the student's target accuracy {check['student']:.2f}% is more than "
            f"{ADAPTED_MARGIN:g} point below the source teacher with target BN statistics "
            f"({check['teacher_target_bn']:.2f}%): adaptation did not pay here"
        )
    run.run_dir.write_json("summary.json", summary)
    run.run_dir.plot_training(x_key=x_key)
    print_summary(summary, title, run.console)
    return summary
