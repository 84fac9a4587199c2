"""The simulated fleet clock on the server (``federation.profiles``): each training round's replies are
timed by their devices' classes, stragglers past the deadline are dropped (or waited for), and the
round's fleet time, energy and bytes go into its metrics row; the summary gets the fleet's totals and
its time to accuracy, and ``accuracy_vs_fleet_time.png`` the curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from flwr.app import Message

from admp_config.fleet import DeviceClass, ProfileSpec
from admp_fleet.profiles import DeviceRound, RoundClock, device_class, round_clock, time_to_accuracy
from strategies import protocol as P
from strategies.base import FleetStrategy


@dataclass
class FleetClock:
    """The fleet's device classes (drawn per device from the seed) and the round deadline."""

    classes: list[DeviceClass]
    seed: int
    deadline_s: float
    late_replies: str
    drawn: dict[int, DeviceClass] = field(default_factory=dict)  # device -> its class, once drawn

    @classmethod
    def from_spec(cls, spec: ProfileSpec, seed: int) -> FleetClock | None:
        """The clock of a run with profiles; None without."""
        return cls(spec.resolved(), seed, spec.deadline_s, spec.late_replies) if spec.active else None

    def class_of(self, device: int) -> DeviceClass:
        """The class ``device`` drew (a pure function of the seed and the device)."""
        if device not in self.drawn:
            self.drawn[device] = device_class(self.classes, self.seed, device)
        return self.drawn[device]

    def time_round(
        self, strategy: FleetStrategy, rnd: int, sent: list[Message], replies: list[Message]
    ) -> tuple[list[Message], dict[str, float]]:
        """The replies that count (stragglers dropped and rejected as such) and the round's clock figures."""
        by_node = dict(strategy.exchange.asked)  # {node: the device it was asked for}
        down = {m.metadata.dst_node_id: P.content_bytes(m.content) for m in sent}
        timed: dict[int, tuple[Message, DeviceRound]] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in by_node or node in timed:
                continue
            device = by_node[node]
            up = P.content_bytes(reply.content)
            timed[node] = (reply, DeviceRound(device, self.class_of(device), _samples(reply), down.get(node, 0), up))
        clock = round_clock([d for _, d in timed.values()], self.deadline_s, self.late_replies)
        late = {d.device for d in clock.late}
        for item in clock.late:
            node = strategy.node_of(item.device)
            reason = f"missed the deadline: {item.seconds:.1f} s simulated ({item.cls.name}) > {self.deadline_s:g} s"
            strategy.reject(rnd, item.device, node, reason)
        if strategy.fleet.over_selection > 0:  # over-selected: the k fastest count, the round ends with them
            clock, spare = keep_fastest(clock, strategy.policy.clients_per_round)
            for item in spare:
                strategy.reject(rnd, item.device, strategy.node_of(item.device), "over-selected: not among the fastest")
            late |= {d.device for d in spare}
        kept = [r for r in replies if r.has_error() or by_node.get(r.metadata.src_node_id) not in late]
        figures = {"fleet_seconds": clock.seconds, "fleet_joules": clock.joules, "stragglers": float(len(clock.late))}
        return kept, figures


def keep_fastest(clock: RoundClock, k: int) -> tuple[RoundClock, list[DeviceRound]]:
    """The round with only its ``k`` fastest accepted devices (timed to the k-th), and the others."""
    ranked = sorted(clock.accepted, key=lambda d: d.seconds)
    kept, spare = ranked[:k], ranked[k:]
    seconds = max((d.seconds for d in kept), default=0.0)
    if clock.late:
        seconds = max(seconds, clock.seconds)
    return RoundClock(kept, clock.late, seconds, sum(d.joules for d in kept), clock.bytes), spare


def _samples(reply: Message) -> int:
    """Samples a training reply's device processed: num-examples x local epochs (0 when unreadable)."""
    try:
        metrics = P.metric_record(reply.content)
        return int(float(metrics[P.NUM_EXAMPLES]) * float(metrics.get("epochs", 1)))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, P.RecordTypeError):
        return 0


def fleet_summary(rows: list[dict[str, Any]], out: Path) -> dict[str, Any] | None:
    """The fleet's totals (time, energy, bytes), the fleet time to within 1 point of the best evaluated
    accuracy, and the accuracy-vs-fleet-time plot; None when the run has no clock."""
    timed = [r for r in rows if r.get("fleet_seconds") is not None]
    if not timed:
        return None
    points = [(float(r["fleet_seconds"]), r.get("target_acc")) for r in timed]
    best = max((a for _, a in points if a is not None), default=None)
    elapsed, curve = 0.0, []
    for seconds, acc in points:
        elapsed += seconds
        if acc is not None:
            curve.append((elapsed, acc))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-")
    ax.set(xlabel="simulated fleet time (s)", ylabel="target test accuracy (%)", title="Accuracy vs fleet time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {
        "fleet_seconds": elapsed,
        "fleet_joules": sum(float(r.get("fleet_joules", 0.0)) for r in timed),
        "bytes": sum(int(r.get("bytes_down", 0)) + int(r.get("bytes_up", 0)) for r in rows),
        "stragglers": int(sum(float(r.get("stragglers", 0.0)) for r in timed)),
        "best_accuracy": best,
        "seconds_to_within_1pt_of_best": time_to_accuracy(points, best - 1.0) if best is not None else None,
    }
