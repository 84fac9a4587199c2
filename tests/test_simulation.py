"""Real Flower + Ray simulations, kept tiny: 4 devices, 2 mask rounds + 1 fine-tune round."""

import json
import math
from pathlib import Path

import pytest
import torch

from simulations.cli import main

TINY = ["data.num_devices=4", "data.samples_per_device=60", "teacher.epochs=4",
        "federation.clients_per_round=3", "federation.mask_rounds=2", "federation.warmup_rounds=1",
        "federation.finetune_rounds=1", "federation.ray_num_cpus=2", "run.threads=1"]


def _simulate(out: Path, *extra: str) -> Path:
    args = ["simulate"]
    for item in [*TINY, f"run.out_dir={out}", *extra]:
        args += ["--set", item]
    assert main(args) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return _simulate(tmp_path_factory.mktemp("a"))


def test_global_model_is_physically_pruned(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    p = summary["prune_ratio"]
    assert p == 0.6
    for group, width in summary["teacher"]["channels"].items():
        assert summary["student"]["channels"][group] == math.ceil((1 - p) * width)
    assert summary["student"]["params"] < summary["teacher"]["params"] / 2
    exported = torch.jit.load(str(uninterrupted / "pruned_model.ts"))
    assert exported(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert summary["onnx_max_abs_diff"] < 1e-4


def test_teacher_reached_each_device_once(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    sends = summary["teacher_sends"]
    assert sends and set(sends.values()) == {1}
    rows = json.loads((uninterrupted / "metrics.json").read_text())
    trained = [r for r in rows if r["phase"] in ("mask", "finetune")]
    assert sum(r["teacher_sends"] for r in trained) == len(sends)
    # rounds without a new device carry no teacher: down bytes ~ clients x (student + masks)
    for r in trained:
        if r["teacher_sends"] == 0:
            assert r["bytes_down"] < r["clients"] * summary["dense_student_bytes"] * 1.05


def test_metrics_and_artefacts_written(uninterrupted):
    rows = json.loads((uninterrupted / "metrics.json").read_text())
    assert [r["phase"] for r in rows] == ["mask", "mask", "merge", "finetune", "final"]
    assert all(r["target_acc"] is not None for r in rows if r["phase"] in ("mask", "finetune", "final"))
    for name in ("config.yaml", "metrics.csv", "summary.json", "training.png", "checkpoint.pt",
                 "pruned_model.onnx", "teacher.pt"):
        assert (uninterrupted / name).is_file(), name
    assert not json.loads((uninterrupted / "summary.json").read_text())["rejections"]


def test_resume_reaches_the_same_model(uninterrupted, tmp_path):
    paused = _simulate(tmp_path, "federation.stop_after_round=1")
    assert json.loads((paused / "metrics.json").read_text())[-1]["round"] == 1
    assert not (paused / "summary.json").exists()
    assert main(["simulate", "--resume", str(paused)]) == 0
    final_a = torch.load(uninterrupted / "checkpoint.pt", weights_only=True)
    final_b = torch.load(paused / "checkpoint.pt", weights_only=True)
    assert final_a["phase"] == final_b["phase"] == "done"
    for key, value in final_a["student"].items():
        assert torch.allclose(value.float(), final_b["student"][key].float(), atol=1e-6), key
    rows_a = json.loads((uninterrupted / "metrics.json").read_text())
    rows_b = json.loads((paused / "metrics.json").read_text())
    assert [r.get("target_acc") for r in rows_a] == [r.get("target_acc") for r in rows_b]


def test_per_client_duals_and_fleet_bn_teacher_reach_a_pruned_model(tmp_path):
    run = _simulate(tmp_path, "federation.dual=per_client", "data.shifts=never")  # one domain: fleet BN
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["rejections"]
    assert "teacher_bn: fleet" in (run / "config.yaml").read_text()
    assert 0 <= summary["teacher"]["target_acc_target_bn"] <= 100  # the adapted teacher was evaluated
    assert set(summary["teacher_sends"].values()) == {1}  # the adapted teacher, once per device
    source = torch.load(run / "teacher.pt", weights_only=True)
    (stored,) = (run / "device_store").glob("teacher-*.pt")
    delivered = torch.load(stored, weights_only=True)
    bn_means = [k for k in source if k.endswith("running_mean")]
    assert bn_means and all(k in delivered for k in bn_means)
    assert all(torch.equal(delivered[k], source[k]) for k in source if "running" not in k and "num_batches" not in k)
    assert not any(torch.equal(delivered[k], source[k]) for k in bn_means)  # BN statistics re-estimated
    for group, width in summary["teacher"]["channels"].items():
        assert summary["student"]["channels"][group] == math.ceil((1 - 0.6) * width)
