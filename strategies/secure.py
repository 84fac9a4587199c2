"""What a training round sums under secure aggregation (``federation.secure_aggregation``), as one vector.

Flower's SecAgg+ (``SecAggPlusWorkflow`` with ``secaggplus_mod``) gives the server only the
example-weighted mean of one list of arrays per device, each value clipped to ±``clipping_range``
and quantized. Everything a training round averages goes into that list, in a form whose weighted
mean is what the plain round computes and whose values stay small:

- ``arrays.<key>``: the device's weights minus the global ones it was sent (an update: small, where a
  BatchNorm's running variance need not be; integer entries, BN batch counters, rounded back);
- ``masks.m.<g>``, ``masks.s.<g>``: the relaxed and soft masks, in [0, 1];
- ``stats.mean-prediction`` (K,); ``stats.feature-sums`` and ``stats.feature-mass`` divided by the
  device's examples (per-sample means: the weighted mean times the round's examples is their sum).

The server sees each device's ``metrics`` (examples, divergence) in clear, and the names of the
entries (``secure-layout``), never their values; it rebuilds one aggregate reply from the mean and
validates it as it would any reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import protocol as P
from strategies.aggregation import ReplyError, check_divergence, check_examples
from strategies.base import FleetStrategy

Parsed = TypeVar("Parsed")

LAYOUT = "secure-layout"  # device -> server: {"names": [...]}, the order of the summed arrays
AGGREGATE = -1  # the device id under which the rebuilt aggregate reply is validated


def secure_vector(reply: RecordDict, sent: RecordDict) -> tuple[list[str], list[np.ndarray]]:
    """(names, arrays) a device's training ``reply`` contributes to the secure sum (module docstring);
    ``sent`` is the message it answers (the global weights the update is taken against)."""
    glob = P.from_record(P.array_record(sent, P.ARRAYS))
    names, arrays = [], []
    for key, value in sorted(P.from_record(P.array_record(reply, P.ARRAYS)).items()):
        names.append(f"{P.ARRAYS}.{key}")
        arrays.append((value.double() - glob[key].double()).float().numpy())
    if P.MASKS in reply:
        for key, value in sorted(P.from_record(P.array_record(reply, P.MASKS)).items()):
            if key.startswith(("m.", "s.")):
                names.append(f"{P.MASKS}.{key}")
                arrays.append(value.float().numpy())
    if P.STATS in reply:
        n = max(float(P.metric(reply, P.NUM_EXAMPLES)), 1.0)
        for key, value in sorted(P.from_record(P.array_record(reply, P.STATS)).items()):
            names.append(f"{P.STATS}.{key}")
            arrays.append((value if key == "mean-prediction" else value / n).float().numpy())
    return names, arrays


def aggregate_reply(
    names: list[str], mean: list[np.ndarray], sent: dict[str, torch.Tensor], examples: int, divergence: float
) -> RecordDict:
    """The reply the sum stands for: the global weights plus the mean update, the mean masks and mean
    prediction, the summed feature statistics, and the round's examples and mean divergence."""
    if len(names) != len(mean):
        raise ValueError(f"secure aggregate: {len(mean)} arrays for {len(names)} names")
    records: dict[str, dict[str, torch.Tensor]] = {P.ARRAYS: {}, P.MASKS: {}, P.STATS: {}}
    for name, value in zip(names, mean, strict=True):
        record, key = name.split(".", 1)
        if record not in records:
            raise ValueError(f"secure aggregate: unknown entry {name}")
        tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
        if record == P.ARRAYS:  # integer entries (BN batch counters) rounded back
            total = sent[key].double() + tensor.reshape(sent[key].shape).double()
            tensor = total if sent[key].is_floating_point() else total.round()
            tensor = tensor.to(sent[key].dtype)
        elif record == P.STATS and key != "mean-prediction":
            tensor = tensor * examples
        records[record][key] = tensor
    missing = sorted(set(sent) - set(records[P.ARRAYS]))
    if missing:
        raise ValueError(f"secure aggregate: no entry for arrays {missing[:3]}")
    weights = {k: records[P.ARRAYS][k] for k in sent}
    content = RecordDict({P.ARRAYS: P.to_record(weights)})
    if records[P.MASKS]:
        content[P.MASKS] = P.to_record(records[P.MASKS])
    if records[P.STATS]:
        content[P.STATS] = P.to_record(records[P.STATS])
    content[P.METRICS] = P.metrics_record({P.NUM_EXAMPLES: examples, "divergence": divergence})
    return content


def layout_record(names: list[str]) -> ConfigRecord:
    """The names of a device's summed arrays, in order (sent in clear: no value)."""
    return ConfigRecord({"names": names})


@dataclass(frozen=True)
class ClearPart:
    """What a device's reply under secure aggregation shows the server: examples, divergence, names."""

    n: int
    divergence: float
    names: tuple[str, ...]


def parse_clear(strategy: FleetStrategy) -> Callable[[int, RecordDict], ClearPart]:
    """A parser of the clear part of a training reply under secure aggregation (bounds as for any reply)."""

    def parse(device: int, content: RecordDict) -> ClearPart:
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=strategy.examples_bound(device, "train"))
        divergence = check_divergence(P.metric(content, "divergence"))
        layout = content.config_records.get(LAYOUT)
        names = layout.get("names") if layout is not None else None
        if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
            raise ReplyError(f"{LAYOUT}.names: expected a list of strings")
        return ClearPart(n, divergence, tuple(str(v) for v in names))

    return parse


def secure_aggregate(
    strategy: FleetStrategy,
    server_round: int,
    replies: Iterable[Message],
    mean: list[np.ndarray] | None,
    sent: dict[str, torch.Tensor],
    parse: Callable[[int, RecordDict], Parsed],
) -> tuple[Parsed | None, int]:
    """The round's aggregate as one validated reply (``parse`` under device ``AGGREGATE``), and how many
    devices it sums; None when too few clear replies passed, their layouts differ, the protocol gave no
    mean, or the aggregate fails a check (logged as a rejection of ``AGGREGATE``)."""
    strategy.exchange.outbox = {}  # the replies answer the SecAgg+ workflow's own messages (Flower binds those)
    clear = strategy.validated(server_round, replies, parse_clear(strategy))
    if mean is None or len(clear) < max(strategy.policy.min_replies, 2):
        return None, len(clear)
    if len({c.names for c in clear}) != 1:
        strategy.reject(server_round, AGGREGATE, -1, "secure aggregate: the devices' layouts differ")
        return None, len(clear)
    total = sum(c.n for c in clear)
    divergence = sum(c.divergence * c.n for c in clear) / max(total, 1)
    try:
        content = aggregate_reply(list(clear[0].names), mean, sent, total, divergence)
        return parse(AGGREGATE, content), len(clear)
    except (ReplyError, ValueError, KeyError, RuntimeError) as exc:
        strategy.reject(server_round, AGGREGATE, -1, f"secure aggregate: {exc}"[:300])
        return None, len(clear)


class SecureRounds(FleetStrategy, Generic[Parsed]):
    """A strategy whose training rounds can also run under secure aggregation: it validates one reply
    (``parse_train_reply``) and combines validated ones (``combine``) against the weights it sent."""

    sent: dict[str, torch.Tensor]  # the global model last sent

    def parse_train_reply(self, device: int, content: RecordDict) -> Parsed:
        """One validated training reply."""
        raise NotImplementedError

    def combine(self, server_round: int, parsed: list[Parsed]) -> tuple[ArrayRecord, MetricRecord]:
        """The validated replies combined into the new global arrays and the round's metrics."""
        raise NotImplementedError

    def aggregate_secure(
        self, server_round: int, replies: Iterable[Message], mean: list[np.ndarray] | None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A secure round: the clear replies and the SecAgg+ mean, combined as the one reply they stand for."""
        reply, count = secure_aggregate(self, server_round, replies, mean, self.sent, self.parse_train_reply)
        if reply is None:
            return None, MetricRecord({"valid-replies": count, "rejected": self.fleet.rejected(server_round)})
        arrays, metrics = self.combine(server_round, [reply])
        return arrays, MetricRecord(dict(metrics) | {"valid-replies": count})
