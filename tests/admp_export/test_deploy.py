"""The device-side artefacts: the model bundle, ``fedadmp adapt-bn``, and evaluation replies."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from flwr.app import Message, RecordDict

from admp.augment import set_input_normalisation
from admp.models import build_model, example_input
from admp.surgery import prune_model
from admp_export.bundle import adapt_bn, load_bundle, save_bundle
from simulations.cli import main
from strategies import protocol as P
from strategies.fedadmp import FedKD
from strategies.fleet import Delivery, Fleet, RoundPolicy
from tests.conftest import set_flower_task


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    dense = build_model("lenet", 10, 0.25)
    set_input_normalisation(dense, torch.rand(32, 1, 28, 28))
    keep = {"conv1": torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0]), "conv2": (torch.arange(16) < 6).float()}
    pruned = prune_model(dense, dense.channel_groups(), keep, example_input(dense)).eval()
    return save_bundle(tmp_path / "pruned_model.pt", "lenet", 10, 0.25, keep, pruned), pruned


def test_bundle_round_trip_rebuilds_the_pruned_model(bundle):
    path, pruned = bundle
    loaded = load_bundle(path)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    assert loaded.conv1.out_channels == 4 and loaded.conv2.out_channels == 6  # the keep masks' shape


def test_adapt_bn_cli_writes_the_devices_onnx_model(bundle, tmp_path, capsys):
    path, pruned = bundle
    local = torch.rand(40, 1, 28, 28) * 0.5  # a device whose inputs are darker than the source
    np.savez(tmp_path / "local.npz", x=local.numpy())
    out = tmp_path / "device.onnx"
    assert main(["adapt-bn", str(path), "--data", str(tmp_path / "local.npz"), "--out", str(out)]) == 0
    assert "40 local samples" in capsys.readouterr().out
    expected = adapt_bn(pruned, local)  # the BN statistics of the device's data, in PyTorch
    assert not torch.allclose(expected.bn1.running_mean, pruned.bn1.running_mean)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 28, 28)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), expected(x), atol=1e-4)


@pytest.mark.parametrize(
    "arrays,args,needle",
    [
        (
            {"x": np.zeros((4, 1, 16, 16), np.float32)},
            [],
            "has samples of shape (1, 16, 16), the model takes (1, 28, 28)",
        ),
        ({"images": np.zeros((4, 1, 28, 28), np.float32)}, [], "no array 'x' (arrays: images)"),
        ({"x": np.full((4, 1, 28, 28), np.nan, np.float32)}, [], "needs at least 2 finite samples"),
        ({"images": np.zeros((4, 1, 28, 28), np.float32)}, ["--key", "images"], None),
    ],
)
def test_adapt_bn_names_bad_input(bundle, tmp_path, capsys, arrays, args, needle):
    path, _ = bundle
    np.savez(tmp_path / "local.npz", **arrays)
    code = main(
        ["adapt-bn", str(path), "--data", str(tmp_path / "local.npz"), "--out", str(tmp_path / "o.onnx"), *args]
    )
    if needle is None:
        assert code == 0
    else:
        assert code == 2 and needle in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a bundle")
    assert main(["adapt-bn", str(tmp_path / "junk.pt"), "--data", str(tmp_path / "local.npz")]) == 2
    assert "not a FedADMP model bundle" in capsys.readouterr().err


def test_evaluation_replies_average_both_figures_and_reject_impossible_accuracies():
    set_flower_task()
    fleet = Fleet({0: 10, 1: 11, 2: 12}, 0, Delivery(P.to_record({"t": torch.ones(1)}), "h"), base_config={})
    strategy = FedKD(weights={"w": torch.zeros(1)}, keep=None, fleet=fleet, policy=RoundPolicy(3))
    msgs = {m.metadata.dst_node_id: m for m in strategy.configure_evaluate(1, P.to_record({"w": torch.zeros(1)}),
                                                                           P.make_config({}), None)}  # fmt: skip

    def reply(node, acc, exported, n):
        values = {"accuracy": acc, "accuracy-as-exported": exported, P.NUM_EXAMPLES: n}
        return Message(RecordDict({P.METRICS: P.metrics_record(values)}), reply_to=msgs[node])

    result = strategy.aggregate_evaluate(
        1, [reply(10, 90.0, 60.0, 1), reply(11, 80.0, 40.0, 3), reply(12, 101.0, 1.0, 5)]
    )
    assert float(result["accuracy"]) == pytest.approx(82.5)  # (90 + 3 * 80) / 4; device 2's 101 % is rejected
    assert float(result["accuracy-as-exported"]) == pytest.approx(45.0)  # (60 + 3 * 40) / 4
    assert [r.device for r in fleet.rejections] == [2] and "not a percentage" in fleet.rejections[0].reason
