"""Local differential privacy on the device (``federation.privacy.mode: local``): a client mod that
clips and noises what a training reply contributes before it leaves the device.

The contribution is the reply's difference from what the server sent (weights, masks ``m`` and
``s``) and its self-training statistics per sample (the mean prediction against the fleet marginal it
received; feature sums and masses over its sample count), clipped and noised by the same maths as the
server's central mode (``admp_privacy/dp.py``), then projected back to the ranges the server checks
(post-processing keeps the guarantee). Flower's ``LocalDpMod`` does the same for a single
ArrayRecord; our replies carry several, so it cannot be used as is.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from admp_privacy.dp import (
    Parts,
    TensorDict,
    add_noise,
    clipped_contribution,
    plus,
    project_distribution,
    project_state,
    project_sums,
    released,
)
from clients.device import config_float
from strategies import protocol as P


def local_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Privatise a training reply when the message asks for local DP (``privacy-clip`` in its config)."""
    reply = call_next(msg, context)
    if reply.has_error() or not str(msg.metadata.message_type).startswith("train"):
        return reply
    config = msg.content.config_records.get(P.CONFIG)  # absent from SecAgg+'s stage messages
    if config is None or "privacy-clip" not in config:
        return reply
    clip, z = config_float(config, "privacy-clip"), config_float(config, "privacy-z")
    generator = torch.Generator().manual_seed(secrets.randbits(63))  # the device's own: the server must not know it
    s_min = float(P.config_json(config, "hp")["s_min"]) if P.MASKS in reply.content else 0.0
    modules = json.loads(str(config.get("privacy-modules", "null")))
    privatise(msg.content, reply.content, Noise(clip, z, generator, modules), s_min)
    return reply


@dataclass(frozen=True)
class Noise:
    """Local DP's settings from the training message: clip, multiplier, generator, trained layers."""

    clip: float
    z: float
    generator: torch.Generator
    modules: list[str] | None  # the layers this device trains (None: every weight)


def _parts(sent: RecordDict, content: RecordDict, modules: list[str] | None) -> tuple[Parts, Parts, int]:
    """(reference, contribution, n) of a training reply: its released weights, masks and statistics."""
    n = int(P.metric(content, P.NUM_EXAMPLES))
    reference: Parts = {"arrays": released(P.from_record(P.array_record(sent, P.ARRAYS)), modules)}
    mine: Parts = {"arrays": released(P.from_record(P.array_record(content, P.ARRAYS)), modules)}
    if P.MASKS in content:
        for name in ("m", "s"):
            reference[name] = P.record_to_masks(P.array_record(sent, P.MASKS), name)
            mine[name] = P.record_to_masks(P.array_record(content, P.MASKS), name)
    if P.STATS in content:
        stats = P.from_record(P.array_record(content, P.STATS))
        if "mean-prediction" in stats:
            p = stats["mean-prediction"].float()
            fleet = P.from_record(P.array_record(sent, P.FLEET)) if P.FLEET in sent else {}
            reference["marginal"] = {
                "p": fleet["marginal"].float() if "marginal" in fleet else torch.full_like(p, 1 / len(p))
            }
            mine["marginal"] = {"p": p}
        if "feature-sums" in stats:
            sums, mass = stats["feature-sums"].float(), stats["feature-mass"].float()
            reference["centroids"] = {"sums": torch.zeros_like(sums), "mass": torch.zeros_like(mass)}
            mine["centroids"] = {"sums": sums / n, "mass": mass / n}
    return reference, mine, n


def privatise(sent: RecordDict, content: RecordDict, noise: Noise, s_min: float) -> None:
    """Replace the reply ``content``'s contribution by its clipped, noised and projected version, in place."""
    reference, mine, n = _parts(sent, content, noise.modules)
    clipped = clipped_contribution(mine, reference, noise.clip)
    noised = plus(reference, add_noise(clipped, noise.z * noise.clip, noise.generator))
    arrays = P.from_record(P.array_record(content, P.ARRAYS))
    content[P.ARRAYS] = P.to_record(
        arrays | {k: v.to(arrays[k].dtype) for k, v in project_state(noised["arrays"]).items()}
    )
    if "m" in noised:
        m = {g: v.clamp(0.0, 1.0) for g, v in noised["m"].items()}
        s = {g: v.clamp(s_min, 1.0) for g, v in noised["s"].items()}
        content[P.MASKS] = P.masks_to_record(m=m, s=s)
    if P.STATS in content:
        content[P.STATS] = P.to_record(_stats(noised, n))


def _stats(noised: Parts, n: int) -> TensorDict:
    """The noised statistics in the reply's form: a probability vector, and sums and masses for ``n``
    samples whose masses add up to ``n`` and no class sum longer than its mass."""
    out: TensorDict = {}
    if "marginal" in noised:
        out["mean-prediction"] = project_distribution(noised["marginal"]["p"])
    if "centroids" in noised:
        sums, mass = project_sums(noised["centroids"]["sums"] * n, noised["centroids"]["mass"], float(n))
        out["feature-sums"], out["feature-mass"] = sums, mass
    return out
