"""Every committed benchmark runs: each script in ``benchmarks/`` once, with its smallest arguments and a
tiny scenario, and writes the report its README figure comes from (keys present, numbers finite).

``deployed_accuracy.py`` and ``int8.py`` read a finished run, and ``secure_overhead.py --plain`` takes one
as its plain baseline; they are run on the simulation test's run (tests/simulations/test_simulation.py),
which already exists there, rather than on one more simulation here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

# The smallest run every simulating benchmark accepts: 4 devices, a one-epoch teacher, one mask round
# after no warm-up and one fine-tune round.
TINY = [
    "data.num_devices=4",
    "data.samples_per_device=40",
    "teacher.epochs=1",
    "data.max_source=300",
    "federation.clients_per_round=3",
    "federation.eval_clients=3",
    "federation.mask_rounds=1",
    "federation.warmup_rounds=0",
    "federation.finetune_rounds=1",
    "federation.teacher_rounds=0",
    "federation.teacher_fallback=false",
    "federation.min_local_steps=0",
    "federation.ray.num_cpus=2",
    "federation.ray.client_cpus=2",  # one Ray worker: one import of torch and Flower instead of two
    "run.threads=1",
]


def bench(script: str, *args: str, sets: list[str] | None = None, timeout: float = 300) -> str:
    """Run ``benchmarks/script`` from the repository root; its stdout, or the failure with its output."""
    cmd = [sys.executable, str(BENCH / script), *args]
    for item in sets or []:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def refused(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/script`` with arguments it should refuse; its exit status and output."""
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def numbers(value: object) -> list[float]:
    """Every number inside a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def report(path: Path, *keys: str) -> dict:
    """The JSON report at ``path``: it has ``keys`` and every number in it is finite."""
    data = json.loads(path.read_text())
    assert set(keys) <= set(data), f"{path.name} lacks {set(keys) - set(data)}"
    assert all(math.isfinite(n) for n in numbers(data)), f"{path.name} holds a non-finite number"
    return data


def test_secure_overhead_refuses_a_baseline_that_is_not_a_finished_plain_run(tmp_path):
    """The runs themselves are measured on the simulation test's run; here, the bad baselines, before any run."""
    script = [sys.executable, str(BENCH / "secure_overhead.py"), "--plain", str(tmp_path)]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "not a finished run (missing config.yaml, metrics.csv, summary.json)" in done.stderr
    for name in ("metrics.csv", "summary.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "config.yaml").write_text("federation:\n  secure_aggregation:\n    enabled: true\n")
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "that run used secure aggregation" in done.stderr
    (tmp_path / "config.yaml").write_text("federation: [1, 2\n")
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "config.yaml is not a run's resolved config" in done.stderr
    done = subprocess.run([*script, "--set", "run.seed=1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "would make the two runs differ" in done.stderr


def test_export_criteria_refuses_a_folder_that_is_not_a_finished_run(tmp_path):
    """Measured on the simulation test's run; here, the refusal before any work."""
    script = [sys.executable, str(BENCH / "export_criteria.py"), str(tmp_path)]
    done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and f"not finished runs (summary.json and teacher.pt needed): {tmp_path}" in done.stderr


def test_inference_latency(tmp_path):
    out = tmp_path / "latency.json"
    bench("inference_latency.py", "--ratios", "0.5", "--repeats", "1", "--out", str(out))
    rows = report(out, "results")["results"]
    assert {r["arch"] for r in rows} == {"lenet", "resnet", "cnn1d"}
    for arch in ("lenet", "resnet", "cnn1d"):
        dense, pruned = (r for r in rows if r["arch"] == arch)
        assert pruned["params"] < dense["params"] and pruned["macs"] < dense["macs"]


def test_latency_table(tmp_path):
    """Every group of a family at each width of the grid and of the uniform check, one row each, with the
    dense model's times; the uniform check carries a measured and a predicted time per batch; a bad
    width is refused before any export."""
    out = tmp_path / "table.json"
    grid = ("--widths", "1", "0.5", "--ratios", "0.75")
    bench("latency_table.py", "--archs", "lenet", *grid, "--repeats", "1", "--out", str(out))
    lenet = report(out, "families")["families"]["lenet"]
    assert lenet["channels"] == {"conv1": 32, "conv2": 64}
    assert [r["keep"] for r in lenet["groups"]["conv1"]] == [32, 16, 8]  # widths 1, 0.5 and 1 - 0.75
    assert [r["keep"] for r in lenet["groups"]["conv2"]] == [64, 32, 16]
    assert all(r["b1_ms"] > 0 and r["b64_ms"] > 0 for rows in lenet["groups"].values() for r in rows)
    (check,) = lenet["uniform"]
    assert check["prune_ratio"] == 0.75 and check["b1_ms_measured"] > 0 and "b64_ms_predicted" in check
    done = refused("latency_table.py", "--widths", "1.5", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--widths must lie in (0, 1]" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_latency_plan(tmp_path):
    """A budget's plan and the uniform model of the same budget, each with its measured times and check;
    the plan's channels fit the family; a budget no width reaches (a hundredth of the dense time: the
    runtime's fixed cost per node alone is more) is recorded as such; a budget outside (0, 1) is refused
    before any measurement."""
    out = tmp_path / "plan.json"
    budgets = ("--budgets", "0.8", "0.01")
    bench("latency_plan.py", "--archs", "lenet", *budgets, "--repeats", "5", "--out", str(out))
    lenet = report(out, "families")["families"]["lenet"]
    row, floor = lenet["budgets"]
    assert floor == {"budget_share": 0.01, "unreachable": ANY} and "every group is at its floor" in floor["unreachable"]
    assert row["budget_share"] == 0.8  # the budget is that share of the dense latency the search measured
    assert row["budget_ms"] == pytest.approx([0.8 * ms for ms in row["search_dense_ms"]])
    plan = row["plan"]
    assert set(plan["channels"]) == {"conv1", "conv2"} and all(
        1 <= plan["channels"][g] <= c for g, c in lenet["channels"].items()
    )
    assert set(plan["ms"]) == {"batch_1", "batch_64"} and isinstance(plan["met"], bool) and row["steps"] >= 1
    assert row["uniform"] is None or 0 < row["uniform"]["prune_ratio"] < 1
    done = refused("latency_plan.py", "--budgets", "1.2", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "--budgets must lie in (0, 1)" in done.stderr and not (tmp_path / "x.json").exists()


def test_privacy_utility(tmp_path):
    runs = tmp_path / "runs.csv"
    shutil.copy(ROOT / "results" / "privacy" / "runs.csv", runs)
    bench("privacy_utility.py", "--runs", str(runs))
    assert (tmp_path / "privacy_utility.md").read_text().startswith("|")
    assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 0
    report(tmp_path / "privacy_utility.json")


def test_source_teacher(tmp_path, shared_data):
    out = tmp_path / "teacher.json"
    args = ["--data-dir", str(shared_data), "--seeds", "0", "--tasks", "usps_mnist", "--layouts", "resize"]
    bench("source_teacher.py", *args, "--out", str(out), sets=["teacher.epochs=1", "data.max_source=600"])
    (row,) = report(out, "runs")["runs"]
    assert row["task"] == "usps_mnist" and row["epochs"] == 1 and row["input"] == "auto"
    assert row["source_val_looks_acc"] is None  # grey digits: no random looks to score
    assert 0 <= row["target_test_acc"] <= 100 and row["target_test_size"] > 0


def test_pruned_ceiling(tmp_path, shared_data):
    """The oracle's rows: the dense model has more parameters than the pruned one, and a rerun skips
    the rows already written."""
    out = tmp_path / "ceiling.json"
    scenario = str(ROOT / "simulations" / "scenarios" / "mnist_usps.yaml")
    sets = ["teacher.epochs=1", "data.max_source=300", "data.num_devices=2", "data.max_target=200"]
    sets += [f"data.data_dir={shared_data}"]
    args = [scenario, "--seeds", "0", "--ratios", "0", "0.5", "--name", "tiny", "--out", str(out)]
    bench("pruned_ceiling.py", *args, sets=sets)
    dense, pruned = report(out, "rows")["rows"]
    assert (dense["prune_ratio"], pruned["prune_ratio"]) == (0.0, 0.5) and dense["task"] == "tiny"
    assert pruned["params"] < dense["params"] and 0 <= pruned["oracle_target_acc"] <= 100
    # trained on the capped target pool, scored on every device's test split: all of USPS's 2,007
    assert (dense["train_samples"], dense["test_samples"]) == (200, 2007)
    assert "seed" not in bench("pruned_ceiling.py", *args, sets=sets)  # nothing left to run: no row printed
    assert len(report(out, "rows")["rows"]) == 2
    done = subprocess.run(
        [sys.executable, str(BENCH / "pruned_ceiling.py"), scenario, "--ratios", "1.0"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--ratios must lie in [0, 1): [1.0]" in done.stderr


def test_federated_overhead(tmp_path):
    out = tmp_path / "overhead.json"
    bench("federated_overhead.py", "--rounds", "2", "--out", str(out), sets=[*TINY, "federation.mask_rounds=2"])
    data = report(out, "simulation_mean_s", "plain_mean_s", "bytes_per_client_round", "context")
    assert data["rounds_compared"] == 1 and data["simulation_mean_s"] > 0 and data["plain_mean_s"] > 0
    context = data["context"]
    assert context["teacher_in_state"]["pickled_bytes"] > context["hash_only"]["pickled_bytes"]


def test_fleet_memory(tmp_path):
    out = tmp_path / "fleet.json"
    bench("fleet_memory.py", "--fleets", "10", "--out", str(out), sets=[*TINY, "data.num_devices=10"])
    (row,) = report(out, "results")["results"]
    assert row["virtual_devices"] == 10 and row["peak_pss_mib"] > 0 and row["peak_processes"] >= 2
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.deployment
def test_deployed_rounds(tmp_path):
    """The benchmark's two runs; its deployed one is the suite's run of the app through the deployment kit
    (``fleet.py up|run|down``): every message served by a device's worker, none by Flower's own process."""
    out = tmp_path / "deployed.json"
    fleet_sized = ("data.num_devices", "federation.clients_per_round", "federation.eval_")
    sets = [s for s in TINY if not s.startswith(fleet_sized)]
    sets += ["federation.eval_every=10", "federation.bn_recalibration=local"]
    bench("deployed_rounds.py", "--devices", "2", "--import-repeats", "1", "--out", str(out), sets=sets, timeout=600)
    data = report(out, "simulated", "deployed", "ratio", "entry_import_seconds")
    deployed = data["deployed"]
    assert deployed["workers"] is True and deployed["worker_requests"] > 0 and deployed["in_process_fallbacks"] == 0
    assert len(deployed["round_seconds"]) == len(data["simulated"]["round_seconds"]) == 2
    assert 0 <= deployed["accuracy"] <= 100
