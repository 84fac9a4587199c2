"""Shared machinery of the FedADMP strategies: seeded sampling, one-time teacher delivery,
reply triage with logged rejections, and federated evaluation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from admp.seeding import numpy_rng
from strategies import protocol as P
from strategies.aggregation import ReplyError

log = logging.getLogger("fedadmp.strategy")
TEACHER_MISSING = "teacher-missing"


@dataclass
class Rejection:
    """A reply that was not aggregated, with its round, node and reason."""

    round: int
    device: int
    node_id: int
    reason: str


@dataclass
class Delivery:
    """Which devices hold the teacher (by content hash) and how often it was sent to each."""

    teacher: ArrayRecord
    teacher_hash: str
    holders: set[int] = field(default_factory=set)
    sends: dict[int, int] = field(default_factory=dict)


class FleetStrategy(Strategy):
    """Base of the FedADMP strategies (Flower Message API).

    ``devices`` maps a stable device id (the simulation's partition id, or a real device's id)
    to its Flower node id. Sampling draws device ids with a generator derived from the root seed
    and the round, so it is reproducible and resumable. The teacher is attached to a device's
    message only until the device holds it.
    """

    def __init__(self, seed: int, clients_per_round: int, delivery: Delivery, base_config: dict[str, Any],
                 min_replies: int = 1, eval_clients: int = 0, rejections: list[Rejection] | None = None) -> None:
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.delivery = delivery
        self.base_config = base_config
        self.min_replies = min_replies
        self.eval_clients = eval_clients
        self.devices: dict[int, int] = {}
        self.rejections: list[Rejection] = rejections if rejections is not None else []
        self.last_bytes = {"down": 0, "up": 0}

    # --- sampling and messages -------------------------------------------------------------
    def sample(self, server_round: int, count: int, salt: str = "train") -> list[int]:
        """Sorted device ids for this round: a seeded draw without replacement."""
        ids = sorted(self.devices)
        count = min(count, len(ids)) if count > 0 else len(ids)
        rng = numpy_rng(self.seed, "sample", salt, server_round)
        return sorted(int(i) for i in rng.choice(ids, size=count, replace=False))

    def messages(self, server_round: int, device_ids: list[int], records: dict[str, Any],
                 config: dict[str, Any], message_type: str, with_teacher: bool) -> list[Message]:
        """One message per device with the records, the merged config and (once) the teacher."""
        out = []
        down = 0
        for device in device_ids:
            content = RecordDict(dict(records))
            content[P.CONFIG] = P.make_config(self.base_config | config | {
                "round": server_round, "device": device, "teacher_hash": self.delivery.teacher_hash})
            if with_teacher and device not in self.delivery.holders:
                content[P.TEACHER] = self.delivery.teacher
                self.delivery.sends[device] = self.delivery.sends.get(device, 0) + 1
                self.delivery.holders.add(device)
            down += P.content_bytes(content)
            out.append(Message(content, dst_node_id=self.devices[device], message_type=message_type))
        self.last_bytes["down"] = down
        return out

    # --- replies ------------------------------------------------------------------------------
    def triage(self, server_round: int, replies: Iterable[Message]) -> list[tuple[int, RecordDict]]:
        """(device id, content) of the replies without an error, sorted by device id.

        Error replies are logged as rejections; a device that reports a missing teacher gets it
        again the next time it is sampled.
        """
        by_node = {node: dev for dev, node in self.devices.items()}
        good: list[tuple[int, RecordDict]] = []
        up = 0
        for reply in replies:
            node = reply.metadata.src_node_id
            device = by_node.get(node, -1)
            if reply.has_error():
                reason = str(reply.error.reason).strip().splitlines()[-1][:300] if reply.error.reason else "error"
                if TEACHER_MISSING in reason:
                    self.delivery.holders.discard(device)
                self.reject(server_round, device, node, f"client error: {reason}")
                continue
            up += P.content_bytes(reply.content)
            good.append((device, reply.content))
        self.last_bytes["up"] = up
        return sorted(good, key=lambda item: item[0])

    def reject(self, server_round: int, device: int, node: int, reason: str) -> None:
        """Record and log a reply that will not be aggregated."""
        self.rejections.append(Rejection(server_round, device, node, reason))
        log.warning("round %s: rejected reply of device %s (node %s): %s", server_round, device, node, reason)

    def validated(self, server_round: int, replies: Iterable[Message], parse) -> list[tuple[int, Any]]:
        """Apply ``parse(content)`` to every good reply; a ReplyError rejects that reply only."""
        parsed = []
        for device, content in self.triage(server_round, replies):
            try:
                parsed.append((device, parse(content)))
            except (ReplyError, KeyError, TypeError, ValueError) as exc:
                self.reject(server_round, device, self.devices.get(device, -1), f"invalid reply: {exc}")
        return parsed

    # --- evaluation ---------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Ask ``eval_clients`` devices (0: all) to evaluate the global model on their test split."""
        devices = self.sample(server_round, self.eval_clients, salt="evaluate")
        records = {P.WEIGHTS: arrays} | self.evaluation_records()
        return self.messages(server_round, devices, records, dict(config), P.EVALUATE, with_teacher=False)

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Extra records the evaluating client needs (masks or keep masks)."""
        return {}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted accuracy over the devices that answered."""
        def parse(content: RecordDict) -> tuple[float, int]:
            metrics = content[P.METRICS]
            return float(metrics["accuracy"]), int(metrics[P.NUM_EXAMPLES])

        results = [r for _, r in self.validated(server_round, replies, parse)]
        total = sum(n for _, n in results)
        if total == 0:
            return None
        return MetricRecord({"accuracy": sum(a * n for a, n in results) / total,
                             "devices": len(results), P.NUM_EXAMPLES: total})

    # --- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume this strategy (tensors and primitives only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``."""


def tensor_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Expected shapes of a state dict, for reply validation."""
    return {k: tuple(v.shape) for k, v in state.items()}
