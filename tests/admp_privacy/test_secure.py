"""Secure aggregation (issue 14 item 3): Flower's SecAgg+ workflow and client mod on our messages. The summed
vector by hand, a tiny run that reports what the plain run reports while no reply shows an array, a
device lost after the key exchange, and the settings it cannot be combined with."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from server.app import run_federated
from strategies import protocol as P
from strategies.secure import aggregate_reply, secure_vector
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import TINY

pytestmark = pytest.mark.usefixtures("flower_task", "quiet_console")


def _reply(w: float, m: float, n: int, sums: float) -> RecordDict:
    return RecordDict(
        {
            P.ARRAYS: P.to_record({"w": torch.tensor([w, 2 * w]), "count": torch.tensor(3)}),
            P.MASKS: P.masks_to_record(m={"g": torch.tensor([m])}, s={"g": torch.tensor([1.0])}),
            P.STATS: P.to_record({"mean-prediction": torch.tensor([m, 1 - m]), "feature-sums": torch.tensor([sums])}),
            P.METRICS: P.metrics_record({P.NUM_EXAMPLES: n}),
        }
    )


def test_the_summed_vector_stands_for_the_plain_aggregate():
    glob = {"w": torch.tensor([1.0, 1.0]), "count": torch.tensor(0)}
    sent = RecordDict({P.ARRAYS: P.to_record(glob)})
    names, a = secure_vector(_reply(2.0, 0.5, 10, 30.0), sent)
    _, b = secure_vector(_reply(4.0, 1.0, 30, 90.0), sent)
    assert names == [
        "arrays.count", "arrays.w", "masks.m.g", "masks.s.g", "stats.feature-sums", "stats.mean-prediction",
    ]  # fmt: skip
    assert np.allclose(a[1], [1.0, 3.0]) and np.allclose(a[4], [3.0])  # an update; sums per sample
    mean = [(10 * x + 30 * y) / 40 for x, y in zip(a, b, strict=True)]  # what SecAgg+ returns
    content = aggregate_reply(names, mean, glob, 40, 0.25)
    weights = P.from_record(P.array_record(content, P.ARRAYS))
    assert torch.allclose(weights["w"], torch.tensor([3.5, 7.0]))  # (10 x [2, 4] + 30 x [4, 8]) / 40
    assert int(weights["count"]) == 3 and weights["count"].dtype == torch.int64
    masks = P.array_record(content, P.MASKS)
    assert torch.allclose(P.record_to_masks(masks, "m")["g"], torch.tensor([0.875]))
    stats = P.from_record(P.array_record(content, P.STATS))
    assert torch.allclose(stats["feature-sums"], torch.tensor([120.0]))  # 30 + 90: a sum again
    assert torch.allclose(stats["mean-prediction"], torch.tensor([0.875, 0.125]))
    assert P.metric(content, P.NUM_EXAMPLES) == 40 and P.metric(content, "divergence") == 0.25


def _run(*extra: str, replies=None) -> tuple[list[dict], list[tuple[Message, Message]]]:
    seen: list[tuple[Message, Message]] = []

    def spy(msg: Message, reply: Message) -> Message | None:
        seen.append((msg, reply))
        return replies(msg, reply) if replies else reply

    with tempfile.TemporaryDirectory() as out:
        run_federated(InProcessGrid(4, replies=spy), config_from_overrides([*TINY, f"run.out_dir={out}", *extra]))
        (run,) = [p for p in Path(out).iterdir() if p.is_dir()]
        return json.loads((run / "metrics.json").read_text()), seen


def test_a_secure_run_reports_what_the_plain_run_does_and_no_reply_shows_an_array():
    plain, _ = _run()
    secure, seen = _run("federation.secure_aggregation.enabled=true")
    # SecAgg+ quantizes every summed value: a model within that noise of the plain one may flip one of the
    # 48 test predictions (100 / 48 = 2.08 points), never more on this tiny run
    for ours, theirs in zip(secure, plain, strict=True):
        if theirs.get("target_acc") is None:
            assert ours.get("target_acc") is None
        else:
            assert ours["target_acc"] == pytest.approx(theirs["target_acc"], abs=100 / 48 + 1e-9)
    assert [r.get("valid_replies") for r in secure] == [r.get("valid_replies") for r in plain]
    trained = [(m, r) for m, r in seen if m.metadata.message_type == "train" and not r.has_error()]
    assert {str(m.content["secaggplus_configs"]["stage"]) for m, _ in trained} == {
        "setup", "share_keys", "collect_masked_vectors", "unmask",
    }  # fmt: skip
    for _, reply in trained:  # every array record of a training reply is empty: the values went masked
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        for record_name, record in reply.content.items():
            assert all(P.declared("train", record_name, key) for key in record), (record_name, list(record))
    kd = [m for m, _ in seen if str(m.metadata.message_type).startswith("train.kd")]
    assert not kd  # the fine-tune's KD rounds went through SecAgg+ too (as train, phase kd)


def test_a_device_lost_after_the_key_exchange_leaves_the_others_sum():
    def lose_device_1(msg: Message, reply: Message) -> Message | None:
        stage = msg.content.config_records.get("secaggplus_configs", {}).get("stage")
        lost = stage == "collect_masked_vectors" and int(msg.content[P.CONFIG]["device"]) == 1
        return None if lost else reply

    extra = (
        "federation.secure_aggregation.enabled=true",
        "federation.clients_per_round=4",
        "federation.round_timeout=1",
    )
    rows, _ = _run(*extra, replies=lose_device_1)
    trained = [r for r in rows if r["phase"] in ("mask", "finetune")]
    assert all(r["valid_replies"] == 3 for r in trained), [r["valid_replies"] for r in trained]
    assert all(r["target_acc"] is not None for r in trained)


@pytest.mark.parametrize(
    "override",
    ["federation.robust.aggregation=median", "federation.dual=per_client", "federation.clients_per_round=1",
     "federation.privacy={mode: central, noise_multiplier: 1.0}"],
)  # fmt: skip
def test_what_secure_aggregation_cannot_be_combined_with(override):
    with pytest.raises(ConfigError, match="secure_aggregation: cannot be combined with"):
        config_from_overrides(["federation.secure_aggregation.enabled=true", "federation.min_replies=1", override])


def test_the_quantization_phase_runs_through_secure_aggregation():
    """quantize.bits with SecAgg+: the phase's rounds are summed securely like the fine-tune's (every reply
    valid, no array shown), and each round's messages carry the penalty's targets."""
    secure = "federation.secure_aggregation.enabled=true"
    rows, seen = _run(secure, "quantize.bits=[8, 4]", "quantize.rounds_per_stage=1")
    quant = [r for r in rows if r["phase"] == "quantize"]
    assert [r["quant_bits"] for r in quant] == [8, 4] and all(r["valid_replies"] == 3 for r in quant)
    targets = [(m, r) for m, r in seen if P.QUANT in m.content]
    assert targets and all(str(m.metadata.message_type) == "train" for m, _ in targets)
    for _, reply in targets:  # the values went masked
        assert reply.has_error() or all(len(a) == 0 for a in reply.content.array_records.values())
    assert not any(P.QUANT_DUAL in r.content for _, r in seen)  # the global dual: nothing more leaves a device
