"""Injected faults of a simulated fleet (``federation.faults``): what may go wrong with a device in a
round, drawn from the root seed so that a faulty run is as reproducible as a clean one.

Per training message (device, round) one draw decides, in this order of precedence:

- ``dropout``: the device does not take part (its reply never comes);
- ``straggler``: the device is slow, its delay drawn from an exponential distribution with mean
  ``straggler_delay_s``; a delay past the round's deadline (``deadline_s``, or the federation's
  ``round_timeout``) means its reply arrives too late and is dropped;
- ``crash``: the device's handler raises (an error reply);
- ``garbage``: the device returns a corrupted reply (one of ``CORRUPTIONS``, drawn).

``hostile_devices`` corrupt every training reply with the ``hostile`` corruptions (all of them,
combined): the attacker of the robust-aggregation study. The draws are pure functions of (seed,
round, device); the client mod that acts on them is ``clients.faults``.
"""

from __future__ import annotations

import math

from admp_config.fleet import CORRUPTIONS, FaultSpec
from admp_config.seeding import numpy_rng


def draw_fault(spec: FaultSpec, seed: int, server_round: int, device: int, deadline_s: float) -> tuple[str, float]:
    """(fault, delay in seconds) of ``device`` in ``server_round``: fault is "" (none), "dropout",
    "late" (a straggler past the deadline), "crash" or "garbage"; a straggler within the deadline
    has fault "" and its delay. ``deadline_s`` is the round's deadline (``spec.deadline_s`` wins)."""
    rng = numpy_rng(seed, "fault", server_round, device)
    u_drop, u_slow, u_crash, u_garbage, u_delay = rng.random(5)
    if u_drop < spec.dropout:
        return "dropout", 0.0
    delay = 0.0
    if u_slow < spec.straggler:
        delay = -spec.straggler_delay_s * math.log1p(-u_delay)  # Exponential(mean straggler_delay_s)
        if delay > (spec.deadline_s or deadline_s):
            return "late", delay
    if u_crash < spec.crash:
        return "crash", delay
    if u_garbage < spec.garbage:
        return "garbage", delay
    return "", delay


def corruptions_for(spec: FaultSpec, seed: int, server_round: int, device: int, fault: str) -> list[str]:
    """What a reply suffers: the ``hostile`` list for a hostile device, one drawn corruption for a
    ``garbage`` fault, none otherwise."""
    if device in spec.hostile_devices:
        return list(spec.hostile)
    if fault != "garbage":
        return []
    rng = numpy_rng(seed, "garbage", server_round, device)
    return [CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]]
