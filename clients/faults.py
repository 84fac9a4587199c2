"""The ClientApp mod that injects a simulated fleet's faults (``admp_fleet.faults``) into training replies.

The server puts the run's ``faults`` in the config of every message only when faults are on (a
simulation setting); the mod draws this device's fault for the round from the root seed and acts
on it: no reply (an error reply with ``DEVICE_DROPPED`` / ``DEVICE_LATE``, which the server drops
like a reply that never came, without waiting for the timeout), a crash, or a corrupted reply.
Evaluation and queries are left alone.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from admp_config.fleet import FaultSpec
from admp_fleet.faults import corruptions_for, draw_fault
from clients.device import config_float, config_int
from strategies import protocol as P


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Inject the drawn fault of this (device, round) into a training reply (a no-op without faults)."""
    config = msg.content.config_records.get(P.CONFIG)
    simulated = "partition-id" in context.node_config  # a real device (device-id) never injects faults
    if (
        not simulated
        or config is None
        or "faults" not in config
        or not str(msg.metadata.message_type).startswith("train")
    ):
        return call_next(msg, context)
    spec = FaultSpec.model_validate(json.loads(str(config["faults"])))
    seed = int(json.loads(str(config["scenario"]))["seed"])
    rnd, device = config_int(config, P.SERVER_ROUND), config_int(config, "device")
    fault, delay = draw_fault(spec, seed, rnd, device, config_float(config, "round-timeout"))
    if fault == "dropout":
        return Message(Error(code=P.DEVICE_DROPPED, reason="injected dropout"), reply_to=msg)
    if fault == "late":
        return Message(
            Error(code=P.DEVICE_LATE, reason=f"injected straggler: {delay:.1f} s, past the deadline"), reply_to=msg
        )
    if fault == "crash":
        raise RuntimeError("injected crash")
    reply = call_next(msg, context)
    kinds = corruptions_for(spec, seed, rnd, device, fault)
    if kinds and not reply.has_error():
        corrupt(reply.content, msg.content, kinds, spec.scale)
    if delay and not reply.has_error() and isinstance(metrics := reply.content.get(P.METRICS), MetricRecord):
        metrics["simulated-delay"] = delay
    return reply


def corrupt(reply: RecordDict, sent: RecordDict, kinds: list[str], scale: float) -> None:
    """Corrupt a training reply in place, as a broken or hostile device would."""
    arrays = P.array_record(reply, P.ARRAYS)
    if "scale" in kinds:  # a boosted update: global + scale x (reply - global)
        glob = P.from_record(P.array_record(sent, P.ARRAYS))
        mine = P.from_record(arrays)
        reply[P.ARRAYS] = P.to_record(
            {k: glob[k] + scale * (v - glob[k]) if v.is_floating_point() else v for k, v in mine.items()}
        )
    if kinds and set(kinds) & {"nan", "float64", "complex", "noise"}:
        reply[P.ARRAYS] = _garbled(P.array_record(reply, P.ARRAYS), kinds)
    metrics = P.metric_record(reply)
    if "huge_n" in kinds:
        metrics[P.NUM_EXAMPLES] = 10**12
    if "bad_metrics" in kinds:
        metrics["divergence"] = float("nan")
    if P.MASKS in reply and {"zero_masks", "flip_duals"} & set(kinds):
        masks = P.array_record(reply, P.MASKS)
        reply[P.MASKS] = ArrayRecord({k: _mask_value(k, v, kinds) for k, v in masks.items()})


def _garbled(arrays: ArrayRecord, kinds: list[str]) -> ArrayRecord:
    """Float arrays turned into NaN, float64, complex64 or random noise."""
    rng = np.random.default_rng(0)
    out: dict[str, Array] = {}
    for key, array in arrays.items():
        x = array.numpy()
        if np.issubdtype(x.dtype, np.floating):
            if "nan" in kinds:
                x = np.full_like(x, np.nan)
            if "noise" in kinds:
                x = rng.normal(0.0, 10.0, size=x.shape).astype(x.dtype)
            if "float64" in kinds:
                x = x.astype(np.float64)
            if "complex" in kinds:
                x = x.astype(np.complex64)
        out[key] = Array(np.ascontiguousarray(x))
    return ArrayRecord(out)


def _mask_value(key: str, array: Array, kinds: list[str]) -> Array:
    """m set to zero ("zero_masks"), U to +-1e30 ("flip_duals"), anything else as it was."""
    x = array.numpy()
    if key.startswith("m.") and "zero_masks" in kinds:
        x = np.zeros_like(x)
    if key.startswith("u.") and "flip_duals" in kinds:
        x = np.where(np.arange(x.size).reshape(x.shape) % 2 == 0, 1e30, -1e30).astype(x.dtype)
    return Array(np.ascontiguousarray(x))
