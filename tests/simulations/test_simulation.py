"""One real Flower + Ray simulation through the CLI, kept tiny (4 devices, 2 mask + 1 fine-tune rounds).

The phases' logic is covered in process (tests/server/test_server.py); this checks the Simulation Engine
path: virtual SuperNodes, the teacher delivered once per device across Ray workers, the exports.
"""

import json
import math
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from simulations.api import show, simulate
from simulations.cli import main

TINY = [
    "data.num_devices=4",
    "data.samples_per_device=60",
    "teacher.epochs=4",
    "data.max_source=300",
    "federation.clients_per_round=3",
    "federation.mask_rounds=2",
    "federation.warmup_rounds=1",
    "federation.finetune_rounds=1",
    "federation.teacher_rounds=0",
    "federation.teacher_fallback=false",  # two tiny mask rounds: the fallback would ship the dense teacher
    "federation.min_local_steps=0",  # one local epoch: this test checks the engine, not the schedule
    "federation.ray.num_cpus=2",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The run, through the Python API, which returns the summary the run wrote."""
    out = tmp_path_factory.mktemp("sim")
    summary = simulate(None, [*TINY, f"run.out_dir={out}"])
    (run_dir,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]  # .device_cache beside it
    assert summary == json.loads((run_dir / "summary.json").read_text()) and summary["run_dir"] == str(run_dir)
    return run_dir


def test_global_model_is_physically_pruned_and_exported(run):
    summary = json.loads((run / "summary.json").read_text())
    for group, width in summary["teacher"]["channels"].items():
        assert summary["student"]["channels"][group] == math.ceil((1 - 0.6) * width)  # conv1 13/32, conv2 26/64
    exported = torch.jit.load(str(run / "pruned_model.ts"))
    x = torch.rand(2, 1, 28, 28)
    session = ort.InferenceSession(str(run / "pruned_model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(exported(x), torch.from_numpy(onnx_out), atol=1e-4)  # both exports agree


def test_show_prints_the_runs_rounds_and_summary(run, capsys):
    assert main(["show", str(run), "--rows", "0"]) == 0
    printed = capsys.readouterr().out
    rows = show(run)["metrics"]
    final = next(r for r in rows if r["phase"] == "final")
    assert f"{final['target_acc']:.2f}" in printed and "finetune" in printed and str(run) in printed.replace("\n", "")


def test_teacher_reached_each_device_once_across_workers(run):
    summary = json.loads((run / "summary.json").read_text())
    check = summary["below_adapted_teacher"]  # said in the summary, whichever way it went
    assert check["student"] == summary["student"]["target_acc"]
    assert check["warning"] == (check["student"] < summary["teacher"]["target_acc_target_bn"] - 1)
    assert summary["teacher_sends"] == {"0": 1, "1": 1, "2": 1, "3": 1} and not summary["rejections"]
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["phase"] for r in rows] == ["mask", "mask", "merge", "start", "finetune", "final"]
    trained = [r for r in rows if r["phase"] in ("mask", "finetune")]
    assert sum(r["teacher_sends"] for r in trained) == 4
    for r in trained:  # rounds that send no teacher carry about clients x (student + masks)
        if r["teacher_sends"] == 0:
            assert r["bytes_down"] < r["clients"] * summary["dense_student_bytes"] * 1.05


def test_the_run_benchmarks_reproduce_its_summary(run, tmp_path):
    """benchmarks/deployed_accuracy.py and int8.py on this run: what the devices get is the summary's figure."""
    from tests.benchmarks.test_benchmarks import bench, report

    bench("deployed_accuracy.py", str(run))
    measured = report(run / "deployed_accuracy.json", "deployed_acc", "summary_target_acc", "as_exported_acc")
    assert measured["deployed_acc"] == pytest.approx(measured["summary_target_acc"], abs=1e-6)
    assert measured["as_exported_acc"] == pytest.approx(measured["summary_target_acc_as_exported"], abs=1e-6)
    assert measured["aggregation"] == "trimmed_mean"  # the default: the robust figure combines by it
    assert measured["deployed_acc_robust"] == pytest.approx(measured["summary_target_acc_robust"], abs=1e-6)
    bench("int8.py", str(run), "--out", str(tmp_path / "int8.json"))
    models = report(tmp_path / "int8.json", "models")["models"]
    assert models["pruned"]["accuracy"] == pytest.approx(measured["deployed_acc"], abs=1e-6)
    assert models["pruned-int8"]["bytes"] < models["pruned"]["bytes"] < models["dense"]["bytes"]


def test_the_compression_benchmark_measures_the_run_as_shipped_and_after_ptq(run, tmp_path):
    """benchmarks/compression.py on a one-run study folder: the float model as shipped is the summary's
    accuracy, the 4-bit copy through the device tool has fewer bytes; the table and plot are written."""
    from tests.benchmarks.test_benchmarks import bench

    summary = json.loads((run / "summary.json").read_text())
    fields = {"run_id": "t-naive", "task": "t", "method": summary["strategy"], "variant": "", "seed": 0}
    row = fields | {"prune_ratio": summary["prune_ratio"], "run_dir": str(run)}
    (tmp_path / "runs.csv").write_text(",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n")
    bench("compression.py", str(tmp_path), "--bits", "4")
    rows = json.loads((tmp_path / "compression.json").read_text())
    assert [(r["bits"], r["how"]) for r in rows] == [(32, "float"), (4, "ptq")]
    assert rows[0]["acc"] == pytest.approx(summary["student"]["target_acc"], abs=1e-6)
    assert rows[1]["bytes"] < rows[0]["bytes"] / 6 and rows[1]["byte_reduction"] > rows[0]["byte_reduction"]
    assert (tmp_path / "compression.md").is_file() and (tmp_path / "t_compression.png").is_file()


def test_the_latency_pairs_benchmark_reads_the_plan_and_its_uniform_pair(run, tmp_path):
    """benchmarks/latency_accuracy.py on a copy of this run given a plan of its own widths and uniform ratio:
    the pair is the study's run without a plan at that ratio (accuracies 93.0 planned against 90.5, dense
    93.0: the uniform model loses 2.5, the plan gains 2.5, so the goal applies and is met), both widths
    are the same model (same parameters); a plan whose ratio has no uniform run is refused by name."""
    import shutil

    from tests.benchmarks.test_benchmarks import bench, refused

    summary = json.loads((run / "summary.json").read_text())
    planned = tmp_path / "planned"
    shutil.copytree(run, planned)
    plan = {"counts": summary["student"]["channels"], "uniform_ratio": summary["prune_ratio"], "budget_ms": {}}
    (planned / "latency_plan.json").write_text(json.dumps(plan))
    header = "run_id,task,method,variant,prune_ratio,seed,student_acc,student_acc_as_exported,run_dir\n"
    study = tmp_path / "study"
    study.mkdir()
    rows = f"t-naive_lat-s0,t,naive,naive_lat,0.95,0,93.0,93.0,{planned}\nt-fedkd-s0,t,fedkd,,0,0,93.0,93.0,\n"
    pair = f"t-naive-u-s0,t,naive,naive_uniform,{summary['prune_ratio']},0,90.5,90.5,\n"
    (study / "runs.csv").write_text(header + rows + pair)
    bench("latency_accuracy.py", str(study), "--repeats", "5", "--rounds", "1")
    (record,) = json.loads((study / "latency_accuracy.json").read_text())
    assert record["uniform_run"] == "t-naive-u-s0" and record["planned_acc"] - record["uniform_acc"] == 2.5
    assert record["plan"]["params"] == record["uniform"]["params"] and record["plan"]["ms"]["batch_1"] > 0
    assert set(record["artefact_ms"]) == {"batch_1", "batch_64"}
    assert "| +2.50 ± 0.00 | -2.50 | applies: met |" in (study / "latency_accuracy.md").read_text()
    (study / "runs.csv").write_text(header + rows)
    done = refused("latency_accuracy.py", str(study), "--repeats", "5")
    assert done.returncode != 0 and "t-naive_lat-s0: no run without a plan at p = " in done.stderr


def test_the_executorch_program_gives_the_devices_the_summarys_accuracy(run, tmp_path):
    """benchmarks/executorch_pte.py on this run: the .pte (XNNPACK) scores what the summary reports."""
    from tests.benchmarks.test_benchmarks import bench, report

    bench("executorch_pte.py", str(run), "--out", str(tmp_path / "et.json"))
    measured = report(tmp_path / "et.json", "pte_acc", "summary_target_acc", "pte_bytes", "pte_latency_ms")
    assert measured["pte_acc"] == pytest.approx(measured["summary_target_acc"], abs=1e-6)
    assert measured["pte_bytes"] > 0 and set(measured["pte_latency_ms"]) == {"batch_1", "batch_64"}


def test_secure_aggregation_replayed_on_the_run_costs_bytes_not_rounds(run, tmp_path):
    """benchmarks/secure_overhead.py with this run as its plain baseline: the secure replay trains the same
    rounds, and SecAgg+ sends keys and shares besides the masked vector."""
    from tests.benchmarks.test_benchmarks import bench, report

    out = tmp_path / "secure.json"
    bench("secure_overhead.py", "--plain", str(run), "--out", str(out))
    data = report(out, "plain", "secure", "ratio")
    assert data["scenario"] == f"{run}/config.yaml"
    assert data["secure"]["training_rounds"] == data["plain"]["training_rounds"] == 3  # 2 mask + 1 fine-tune
    assert data["ratio"]["mb_up_per_round"] > 1


def test_export_criteria_rescore_the_run_as_its_summary_scored_it(run, tmp_path):
    """benchmarks/export_criteria.py rebuilds the devices and both models: the target accuracies it reports
    beside its label-free criteria are the summary's (teacher + each device's BN; the shipped student)."""
    from tests.benchmarks.test_benchmarks import bench, report

    out = tmp_path / "criteria.json"
    bench("export_criteria.py", str(run), "--out", str(out))
    (row,) = report(out, "runs")["runs"]
    summary = json.loads((run / "summary.json").read_text())
    assert row["teacher_target_acc"] == pytest.approx(summary["teacher"]["target_acc_target_bn"], abs=1e-6)
    assert row["student_target_acc"] == pytest.approx(summary["student"]["target_acc"], abs=1e-6)
    assert row["teacher_source_val"] == pytest.approx(summary["teacher"]["source_val_acc"], abs=1e-6)
    assert 0 <= row["agreement"] <= 100 and 0 <= row["agreement_confident"] <= 100 and row["dropped_keys"] == []
    models = row["models"]  # every saved candidate; the shipped one is the chosen candidate, each with device BN
    assert {"candidate:final", "candidate:start", "candidate:cloud"} <= set(models) and "adapted" not in models
    chosen = models[f"candidate:{summary['selection']['chosen']}"]
    assert chosen["target_acc"] == pytest.approx(row["student_target_acc"], abs=1e-6)
    assert row["reference_rule"] == {"applies": False}  # no self-trained teacher in this run
