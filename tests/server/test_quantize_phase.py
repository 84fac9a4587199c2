"""The quantization phase end to end through the in-process Grid: its rounds and stages, the integer
artefact the devices run (its accuracy is the summary's), resume inside the phase, and PTQ."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from admp.quantize import project, quantized_weights
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_data.tasks import build_task
from admp_device.infer import open_session
from admp_export.bundle import load_bundle
from server.app import run_federated
from simulations.centralized import run_centralized
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import TINY, _rows, _run, _summary

pytestmark = pytest.mark.usefixtures("flower_task")
QUANT = ["quantize.bits=[8, 4]", "quantize.rounds_per_stage=1"]


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory):
    from tests.conftest import set_flower_task

    set_flower_task()
    return _run(tmp_path_factory.mktemp("quant"), *QUANT)


def _on_levels(state: dict[str, torch.Tensor], names: list[str], bits: int) -> bool:
    return all(torch.allclose(project(state[n], bits), state[n], atol=1e-6) for n in names)


def test_the_phase_rounds_stages_and_the_shipped_integer_model(quant_run):
    rows = _rows(quant_run)
    assert [r["phase"] for r in rows] == ["mask"] * 3 + ["merge", "start", "finetune", "quantize", "quantize", "final"]
    quant = [r for r in rows if r["phase"] == "quantize"]
    assert [r["round"] for r in quant] == [5, 6] and [r["quant_bits"] for r in quant] == [8, 4]
    assert [r["quant_rho"] for r in quant] == pytest.approx([1.2, 1.2])  # each stage: rho0 = 1, one step x1.2
    summary = _summary(quant_run)
    assert summary["quantization"]["stages"] == [8, 4] and set(summary["quantization"]["bits"].values()) == {4}
    model = load_bundle(quant_run / "pruned_model.pt")
    assert _on_levels(model.state_dict(), quantized_weights(model), 4)
    graph = onnx.load(str(quant_run / "pruned_model.onnx"))
    assert sum(i.data_type == TensorProto.INT4 for i in graph.graph.initializer) == 4
    storage = summary["storage"]
    assert storage["model_bytes"] < storage["float_bytes"] / 6 and storage["byte_reduction"] > 15
    assert json.loads((quant_run / "pruned_model.json").read_text())["weights"].startswith("weight-only QDQ")


def test_the_devices_get_the_accuracy_the_summary_reports(quant_run, tmp_path):
    """Each device adapts BN with the shipped tool (the run infers with local BN) and runs the integer
    model it writes in ONNX Runtime: the accuracy over every test sample is the summary's."""
    from simulations.cli import main as fedadmp

    task = build_task(config_from_overrides([*TINY]).data, 0)
    hits = total = 0
    for i in range(task.num_devices):
        device = task.device(i)
        np.savez(tmp_path / "x.npz", x=device.train.x.numpy())
        out = tmp_path / f"d{i}.onnx"
        assert (
            fedadmp(
                ["adapt-bn", str(quant_run / "pruned_model.pt"), "--data", str(tmp_path / "x.npz"), "--out", str(out)]
            )
            == 0
        )
        assert any(i.data_type == TensorProto.INT4 for i in onnx.load(str(out)).graph.initializer)
        (logits,) = open_session(out).run(None, {"input": device.test.x.numpy()})
        hits += int((torch.from_numpy(logits).argmax(1) == device.test.y).sum())
        total += len(device.test)
    assert 100.0 * hits / total == pytest.approx(_summary(quant_run)["student"]["target_acc"], abs=1e-6)


def test_resume_inside_the_phase_reaches_the_same_model(quant_run, tmp_path):
    paused = _run(tmp_path, *QUANT, "federation.stop_after_round=5")
    ckpt = torch.load(paused / "checkpoint.pt", weights_only=True)
    assert ckpt["phase"] == "quant" and ckpt["quant"]["state"]["stage"] == 0
    run_federated(InProcessGrid(4), config_from_overrides([*TINY, *QUANT, f"run.out_dir={tmp_path}"]), str(paused))
    a = torch.load(quant_run / "checkpoint.pt", weights_only=True)["student"]
    b = torch.load(paused / "checkpoint.pt", weights_only=True)["student"]
    assert all(torch.allclose(v.float(), b[k].float(), atol=1e-6) for k, v in a.items())
    assert [r["phase"] for r in _rows(paused)] == [r["phase"] for r in _rows(quant_run)]
    assert _summary(paused)["selection"] == _summary(quant_run)["selection"]  # the choice survives the pause


def test_ptq_projects_the_chosen_model_without_rounds(tmp_path):
    run = _run(tmp_path, "quantize.bits=[2]", "quantize.method=ptq", "federation.strategy=naive")
    assert "quantize" not in [r["phase"] for r in _rows(run)]
    model = load_bundle(run / "pruned_model.pt")
    assert _on_levels(model.state_dict(), quantized_weights(model), 2)
    assert _summary(run)["quantization"]["method"] == "ptq"


def test_a_quantization_checkpoint_needs_the_phase_and_the_centralized_run_refuses(quant_run, tmp_path):
    paused = _run(tmp_path / "a", *QUANT, "federation.stop_after_round=5")
    state = torch.load(paused / "checkpoint.pt", weights_only=True)
    assert set(state["quant"]["bits"].values()) == {4} and state["quant"]["info"]["stages"] == [8, 4]
    with pytest.raises(ConfigError, match=r"quantize\.method admm"):
        run_federated(InProcessGrid(4), config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'a'}"]), str(paused))
    with pytest.raises(ConfigError, match=r"quantize\.bits: the centralized run"):
        run_centralized(config_from_overrides([*TINY, "quantize.bits=[4]", f"run.out_dir={tmp_path / 'b'}"]))


def test_a_byte_budget_mixes_the_widths_by_the_fleets_sensitivity(tmp_path):
    """PTQ at a budget between the all-2-bit and all-4-bit sizes of the tiny pruned LeNet: the fleet's
    sensitivity (one query, logged as a bit-choice row) sets each layer's width, the artefact fits."""
    budget = 12000  # the 4-bit model of this run stores about 16.4 kB, the 2-bit one about 9 kB
    run = _run(
        tmp_path,
        "quantize.bits=[8, 4, 2]",
        "quantize.method=ptq",
        f"quantize.budget_bytes={budget}",
        "federation.strategy=naive",
    )
    summary = _summary(run)
    mixed = summary["quantization"]["mixed_precision"]
    assert mixed["budget_bytes"] == budget and mixed["devices"] >= 1 and mixed["widths"] == [8, 4, 2]
    assert set(mixed["sensitivity"]) == set(summary["quantization"]["bits"])
    assert 2 in summary["quantization"]["bits"].values()
    assert summary["storage"]["model_bytes"] <= budget
    assert "bit-choice" in [r["phase"] for r in _rows(run)]
    dense = summary["storage"]["dense_float_bytes"]  # the same budget as a factor of the dense model's bytes
    again = _run(
        tmp_path / "r",
        "quantize.bits=[8, 4, 2]",
        "quantize.method=ptq",
        "quantize.budget_reduction=25",
        "federation.strategy=naive",
    )
    assert _summary(again)["quantization"]["mixed_precision"]["budget_bytes"] == int(dense / 25)
    assert _summary(again)["storage"]["model_bytes"] <= dense / 25
    model = load_bundle(run / "pruned_model.pt")
    bits = summary["quantization"]["bits"]
    assert all(
        torch.allclose(project(model.state_dict()[n], b), model.state_dict()[n], atol=1e-6) for n, b in bits.items()
    )


def test_a_sensitivity_reply_that_is_not_a_sum_of_divergences_is_rejected():
    from flwr.app import RecordDict

    from server.precision import _parse
    from strategies import protocol as P
    from strategies.aggregation import ReplyError

    class Bound:
        def examples_bound(self, device, kind):
            return 100

    parse = _parse(["fc.weight"], 2, Bound())

    def reply(values, n=10):
        arrays = P.to_record({"sens.fc.weight": torch.tensor(values)})
        return RecordDict({P.ARRAYS: arrays, P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n})})

    sums, n = parse(0, reply([0.5, 2.0]))
    assert sums["fc.weight"].tolist() == [0.5, 2.0] and n == 10
    for bad, needle in (([-1.0, 2.0], "not a sum"), ([0.5, 1e9], "not a sum"), ([0.5], "quantsens")):
        with pytest.raises(ReplyError, match=needle):
            parse(0, reply(bad))


def test_a_quantization_checkpoint_with_bad_bits_is_refused(tmp_path):
    from admp.models import build_model
    from server.resume import _check_quant

    cfg = config_from_overrides([*TINY, *QUANT])
    model = build_model("lenet", 10, 0.5)
    names = quantized_weights(model)
    zeros = {n: torch.zeros_like(model.state_dict()[n]) for n in names}
    good = {
        "state": {"z": zeros, "u": zeros, "rho": 1.0, "stage": 0},
        "selection": {},
        "bits": dict.fromkeys(names, 4),
        "info": {},
    }
    _check_quant(cfg, good, model, tmp_path)
    for bad in (dict.fromkeys(names, 9), dict.fromkeys(names[1:], 4)):
        with pytest.raises(ConfigError, match=r"quant\.bits"):
            _check_quant(cfg, good | {"bits": bad}, model, tmp_path)
    with pytest.raises(ConfigError, match="is missing"):
        _check_quant(cfg, {k: v for k, v in good.items() if k != "info"}, model, tmp_path)


def test_per_client_quantization_duals_in_a_run(tmp_path):
    """quantize.dual per_client, two rounds a stage: every quantization reply carries the device's U_k, zero
    in a stage's first round (a new problem) and not zero later in it for a device that trained before
    (advanced after the new Z); rho follows the same schedule (1.2, 1.44 in each stage); the shipped weights
    are on the last stage's levels."""
    from strategies import protocol as P

    duals: list[tuple[int, float]] = []  # (the stage's Z-steps the message announced, the reply's largest |U_k|)

    def spy(msg, reply):
        if P.QUANT in msg.content and not reply.has_error():
            u = P.from_record(reply.content[P.QUANT_DUAL])
            duals.append((int(msg.content[P.CONFIG]["quant-steps"]), max(float(v.abs().max()) for v in u.values())))
        return reply

    extra = ("quantize.bits=[8, 4]", "quantize.rounds_per_stage=2", "quantize.dual=per_client")
    run = _run(tmp_path, *extra, grid=InProcessGrid(4, replies=spy))
    assert len(duals) == 12 and all(u == 0 for steps, u in duals if steps == 0)  # 4 rounds x 3 devices
    assert any(u > 0 for steps, u in duals if steps == 1)  # 3 of 4 devices twice in a stage: some overlap
    quant = [r for r in _rows(run) if r["phase"] == "quantize"]
    assert [r["quant_bits"] for r in quant] == [8, 8, 4, 4]
    assert [r["quant_rho"] for r in quant] == pytest.approx([1.2, 1.44, 1.2, 1.44])
    assert all(r["rejected"] == 0 for r in quant)  # every reply carried a dual within its bound
    model = load_bundle(run / "pruned_model.pt")
    assert _on_levels(model.state_dict(), quantized_weights(model), 4)


def test_a_devices_quantization_dual_is_checked_against_its_bound():
    """|U_k| <= (steps + 1) * (max|W_k| + max|Z|): after one step, W up to 0.5 and Z up to 0.4 allow 1.8."""
    from strategies.aggregation import ReplyError
    from strategies.quantize import check_quant_dual

    w, z = {"w": torch.tensor([[0.5, -0.2]])}, {"w": torch.tensor([[0.4, 0.0]])}
    check_quant_dual({"w": torch.tensor([[1.7, -1.8]])}, w, z, 1)
    with pytest.raises(ReplyError, match=r"qdual\.w: \|U\| up to 1\.9, allowed 1\.8"):
        check_quant_dual({"w": torch.tensor([[1.9, 0.0]])}, w, z, 1)
    with pytest.raises(ReplyError, match=r"qdual\.w"):
        check_quant_dual({"w": torch.tensor([1.0, 0.0])}, w, z, 1)  # not Z's shape
    with pytest.raises(ReplyError, match="qdual"):
        check_quant_dual({"w": torch.tensor([[float("nan"), 0.0]])}, w, z, 1)


def test_per_client_quantization_duals_are_refused_where_nothing_single_is_seen():
    base = [*TINY, "quantize.bits=[8, 4]", "quantize.dual=per_client"]
    with pytest.raises(ConfigError, match=r"quantize\.dual: per_client sends each device's own dual"):
        config_from_overrides([*base, "federation.secure_aggregation.enabled=true"])
    with pytest.raises(ConfigError, match=r"per_client needs quantize\.method admm"):
        config_from_overrides([*base, "quantize.method=ptq"])
