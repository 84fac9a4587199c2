"""Device profiles and the simulated fleet clock (``federation.profiles``): plain maths, no Flower.

A scenario declares device classes — compute speed, memory, links, energy, share of the fleet —
in the config or in a CSV file; each virtual device draws its class from the root seed. A round's
*fleet time* is what the slowest accepted device needs: its compute (the samples it trained on,
local epochs included, over its class's speed) plus its transfers (the bytes it received and sent
over its links), bounded by the round's deadline. A device past the deadline is a straggler: its
reply is dropped (``late_replies: drop``) or taken and waited for (``accept``). Energy counts the
samples each accepted device processed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from admp_config.base import ConfigError
from admp_config.fleet import DeviceClass, ProfileSpec
from admp_config.seeding import numpy_rng


def read_trace(path: Path) -> frozenset[tuple[int, int]]:
    """The (device, round) pairs of an availability trace (CSV ``device,round``, a header line)."""
    if not path.is_file():
        raise ConfigError(f"federation.profiles.availability_csv: {path} not found")
    pairs = set()
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if number == 1 or not row:
                continue
            try:
                pairs.add((int(row[0]), int(row[1])))
            except (ValueError, IndexError) as exc:
                raise ConfigError(
                    f"federation.profiles.availability_csv: {path} row {number}: not 'device,round'"
                ) from exc
    return frozenset(pairs)


def is_available(spec: ProfileSpec, seed: int, rnd: int, device: int, trace: frozenset[tuple[int, int]]) -> bool:
    """Whether ``device`` can be sampled in round ``rnd``: always; with probability ``availability_p``
    (random); with a probability that swings between ``diurnal_low`` and ``availability_p`` over
    ``diurnal_period`` rounds, each device with its own phase (diurnal); or as the trace lists it."""
    if spec.availability == "always":
        return True
    if spec.availability == "trace":
        return (device, rnd) in trace
    p = spec.availability_p
    if spec.availability == "diurnal":
        phase = float(numpy_rng(seed, "timezone", device).random()) * spec.diurnal_period
        wave = (1 + math.sin(2 * math.pi * (rnd + phase) / spec.diurnal_period)) / 2  # in [0, 1]
        p = spec.diurnal_low + (spec.availability_p - spec.diurnal_low) * wave
    return bool(numpy_rng(seed, "available", rnd, device).random() < p)


def device_class(classes: list[DeviceClass], seed: int, device: int) -> DeviceClass:
    """The class ``device`` draws from the root seed, with probabilities proportional to the shares."""
    shares = np.array([c.share for c in classes], dtype=float)
    index = int(numpy_rng(seed, "profile", device).choice(len(classes), p=shares / shares.sum()))
    return classes[index]


@dataclass(frozen=True)
class DeviceRound:
    """What one device did in a round: its class, the samples it processed and the bytes it moved."""

    device: int
    cls: DeviceClass
    samples: int  # samples processed (examples x local epochs)
    bytes_down: int
    bytes_up: int

    @property
    def seconds(self) -> float:
        """Compute plus transfer time: samples / speed + bytes x 8 / link rate, each way."""
        compute = self.samples / self.cls.samples_per_s
        down = self.bytes_down * 8 / (self.cls.downlink_mbps * 1e6)
        up = self.bytes_up * 8 / (self.cls.uplink_mbps * 1e6)
        return compute + down + up

    @property
    def joules(self) -> float:
        """Energy of the samples it processed."""
        return self.samples * self.cls.joules_per_sample


@dataclass(frozen=True)
class RoundClock:
    """A round on the fleet clock: the devices that count, those past the deadline, and its figures."""

    accepted: list[DeviceRound]
    late: list[DeviceRound]
    seconds: float  # the slowest accepted device's time, bounded by the deadline when replies were dropped
    joules: float
    bytes: int


def round_clock(devices: list[DeviceRound], deadline_s: float, late_replies: str) -> RoundClock:
    """Split a round's devices by the deadline (``late_replies``: drop or accept) and time the round."""
    deadline = deadline_s if deadline_s > 0 else math.inf
    late = [d for d in devices if d.seconds > deadline] if late_replies == "drop" else []
    accepted = [d for d in devices if d not in late]
    seconds = max((d.seconds for d in accepted), default=0.0)
    if late:  # the server waited until the deadline for the stragglers
        seconds = max(seconds, deadline)
    return RoundClock(
        accepted,
        late,
        seconds,
        sum(d.joules for d in accepted),
        sum(d.bytes_down + d.bytes_up for d in devices),
    )


def time_to_accuracy(rows: list[tuple[float, float | None]], target: float) -> float | None:
    """The fleet time (cumulative seconds) at which the evaluated accuracy first reaches ``target``."""
    elapsed = 0.0
    for seconds, accuracy in rows:
        elapsed += seconds
        if accuracy is not None and accuracy >= target:
            return elapsed
    return None
