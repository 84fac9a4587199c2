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
from typing import Annotated, Literal, get_args

from pydantic import Field

from admp_config.base import Section
from admp_config.seeding import numpy_rng

Corruption = Literal["scale", "huge_n", "zero_masks", "flip_duals", "nan", "float64", "complex", "noise", "bad_metrics"]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
HOSTILE: tuple[Corruption, ...] = ("scale", "huge_n", "zero_masks", "flip_duals")  # the attacker
Fault = Literal["dropout", "straggler", "crash", "garbage"]
Probability = Annotated[float, Field(ge=0, lt=1)]


class FaultSpec(Section):
    """Faults injected into a simulated fleet; all off by default. Training messages only: the final
    evaluation asks every device, so faulty and clean runs report on the same test data."""

    dropout: Probability = 0.0  # per (round, device): the device does not answer
    straggler: Probability = 0.0  # per (round, device): the device is slow (see straggler_delay_s)
    straggler_delay_s: Annotated[float, Field(gt=0)] = 30.0  # a straggler's mean delay (exponential)
    deadline_s: Annotated[float, Field(ge=0)] = 0.0  # replies later than this are dropped; 0: round_timeout
    crash: Probability = 0.0  # per (round, device): the handler raises
    garbage: Probability = 0.0  # per (round, device): a corrupted reply (a drawn kind of CORRUPTIONS)
    hostile_devices: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)  # corrupt every reply
    hostile: list[Corruption] = Field(default_factory=lambda: list(HOSTILE))  # what hostile devices do
    scale: Annotated[float, Field(gt=0)] = 8.0  # "scale": the update (reply - global) times this

    @property
    def active(self) -> bool:
        """Whether any fault is injected."""
        return bool(self.dropout or self.straggler or self.crash or self.garbage or self.hostile_devices)


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
