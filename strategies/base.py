"""Shared machinery of the FedADMP strategies: seeded sampling, one-time teacher delivery,
reply triage with logged rejections, and federated evaluation."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from admp_config.seeding import numpy_rng
from strategies import protocol as P
from strategies.aggregation import ReplyError, check_examples, check_percent
from strategies.exchange import Exchange
from strategies.fleet import Fleet, Rejection, RoundPolicy
from strategies.robust import Defence, combine_figure
from strategies.selftraining import DeviceStats, LabelFree, label_free_metrics

log = logging.getLogger("fedadmp.strategy")
Parsed = TypeVar("Parsed")


def _claimed(content: RecordDict, key: str) -> float:
    """A reply's claimed count ``key`` (NaN when it has no readable one)."""
    try:
        return P.metric(content, key)
    except (KeyError, TypeError):
        return math.nan


class FleetStrategy(Strategy):
    """Base of the FedADMP strategies (Flower Message API).

    Sampling draws device ids with a generator derived from the root seed and the round, so it
    is reproducible and resumable. The teacher is attached to a device's message only until the
    device holds it; a reply with the ``TEACHER_MISSING`` error code clears that. Replies are
    validated by the subclass's parser; a reply that fails is rejected (logged with its device
    and reason, listed in the run's summary) and not aggregated.
    """

    def __init__(self, *, fleet: Fleet, policy: RoundPolicy) -> None:
        self.fleet = fleet
        self.policy = policy
        self.exchange = Exchange(0)  # what the exchange under way sent (messages() starts a new one)

    # --- sampling and messages -------------------------------------------------------------
    def sample(self, server_round: int, count: int, salt: str = "train") -> list[int]:
        """Sorted device ids for this round: a seeded draw without replacement (0: every device). A
        training round draws among the devices available in that round, and over-selects."""
        ids = self.fleet.roster.ids()
        if salt == "train" and count > 0 and self.fleet.over_selection > 0:
            count = math.ceil(count * (1 + self.fleet.over_selection))
        rng = numpy_rng(self.fleet.seed, "sample", salt, server_round)
        if self.fleet.privacy is not None and self.fleet.privacy.spec.noise == "os":  # amplification by sampling
            rng = np.random.default_rng(secrets.randbits(63))  # needs a sample nobody can predict from the seed
        available = self.fleet.available
        if salt == "train" and available is not None:  # the fleet in a seeded random order, each device's
            chosen: list[int] = []  # availability asked until enough answered: ~count / p draws, not N
            for index in rng.permutation(len(ids)):
                if available(server_round, ids[index]):
                    chosen.append(int(ids[index]))
                    if len(chosen) == count:
                        break
            return sorted(chosen)
        count = min(count, len(ids)) if count > 0 else len(ids)
        return sorted(int(i) for i in rng.choice(ids, size=count, replace=False))

    def messages(
        self,
        server_round: int,
        device_ids: list[int],
        records: dict[str, Any],
        config: dict[str, Any],
        message_type: str,
        with_teacher: bool,
        collect_stats: bool = False,
        attach_teacher: bool = False,
    ) -> list[Message]:
        """One message per device with the records, the merged config and (once) the teacher; starts the
        round's ``Exchange`` (``collect_stats``: the replies' statistics become the fleet's aggregates).
        ``attach_teacher``: the teacher also goes to a device that lacks it when the message is no
        training message (an evaluation that compares the model with it)."""
        delivery = self.fleet.delivery
        prior = self.fleet.shared.records() if with_teacher else {}  # training messages carry the aggregates
        if prior:
            config = config | self.fleet.shared.config()
        if with_teacher and self.fleet.privacy is not None:  # training: local DP's clip and noise
            config = config | self.fleet.privacy.device_config()
            self.fleet.privacy.asked(device_ids)
        out = []
        nodes = self.fleet.roster.route(device_ids)
        self.exchange = Exchange(server_round, dict(zip(nodes, device_ids, strict=True)), collect_stats=collect_stats)
        for device, node in zip(device_ids, nodes, strict=True):
            content = RecordDict(dict(records) | prior)
            content[P.CONFIG] = P.make_config(
                self.fleet.base_config
                | config
                | {P.SERVER_ROUND: server_round, "device": device, "teacher_hash": delivery.teacher_hash}
            )
            if (with_teacher or attach_teacher) and device not in delivery.holders:
                content[P.TEACHER] = delivery.teacher
                delivery.sends[device] = delivery.sends.get(device, 0) + 1
                delivery.holders.add(device)
            out.append(Message(content, dst_node_id=node, message_type=message_type))
            self.exchange.outbox[node] = out[-1]  # the grid sets its id on push: a reply must answer this one
        return out

    # --- replies ------------------------------------------------------------------------------
    def triage(self, server_round: int, replies: Iterable[Message]) -> list[tuple[int, RecordDict]]:
        """(device id, content) of the replies without an error, sorted by device id.

        Error replies are logged as rejections; a device that reports a missing teacher gets it
        again the next time it is sampled. A reply from a node that was not asked, a second reply
        from one node, or a reply that does not answer the message its node was sent (another
        message's id: a stale or cross-round reply; another message type) is rejected; a reply is
        the device's its node was asked for.
        """
        good: list[tuple[int, RecordDict]] = []
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            device = self.exchange.asked.get(node, -1)
            refusal = self.exchange.refusal(server_round, reply, seen)
            if refusal:
                self.reject(server_round, device, node, refusal)
                continue
            seen.add(node)  # after the checks: a forged reply first cannot shut out the node's real one
            if reply.has_error():
                lines = str(reply.error.reason or "").strip().splitlines()
                reason = (lines or ["error"])[-1][:300]
                if reply.error.code == P.TEACHER_MISSING:
                    self.fleet.delivery.holders.discard(device)
                self.reject(server_round, device, node, f"client error: {reason}")
                continue
            good.append((device, reply.content))
        return sorted(good, key=lambda item: item[0])

    def reject(self, server_round: int, device: int, node: int, reason: str) -> None:
        """Record and log a reply that will not be aggregated."""
        self.fleet.rejections.append(Rejection(server_round, device, node, reason))
        log.warning("round %s: rejected reply of device %s (node %s): %s", server_round, device, node, reason)

    def validated(
        self, server_round: int, replies: Iterable[Message], parse: Callable[[int, RecordDict], Parsed]
    ) -> list[Parsed]:
        """``parse(device, content)`` of every good reply, in device order; a failing parse rejects
        that reply (whatever it raises: no reply may crash the server's round)."""
        parsed: list[Parsed] = []
        good = self.triage(server_round, replies)
        claims = {key: [_claimed(content, key) for _, content in good] for key in (P.NUM_EXAMPLES, "unlabeled")}
        self.exchange.claims = claims
        for device, content in good:
            try:
                parsed.append(parse(device, content))
            except (ReplyError, KeyError) as exc:
                self.reject(server_round, device, self.node_of(device), f"invalid reply: {exc}")
            except Exception as exc:  # a malformed record (unknown dtype, bad bytes) names its type
                reason = f"invalid reply: {type(exc).__name__}: {exc}"[:300]
                self.reject(server_round, device, self.node_of(device), reason)
        return parsed

    def node_of(self, device: int) -> int:
        """The node ``device`` was asked through in the exchange under way (-1: not asked)."""
        return self.exchange.node_of(device)

    def examples_bound(self, device: int, split: str, metric: str = P.NUM_EXAMPLES) -> int | None:
        """The most samples ``device`` can report for its ``split`` ("train" or "test"): its known size,
        or, for a device whose data the server does not know, 10 x the median of what the round's
        replies claim under the same ``metric``."""
        if device < 0:  # the rebuilt aggregate of a secure round: its devices' counts were each bounded
            return None
        if self.fleet.capacity is not None:
            train, test = self.fleet.capacity(device)
            return train if split == "train" else test
        finite = sorted(c for c in self.exchange.claims.get(metric, []) if math.isfinite(c) and c > 0)
        return int(10 * finite[len(finite) // 2]) if finite else None

    # --- evaluation ---------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask ``eval_clients`` devices (0: all) to evaluate the global model on their test split.

        ``config`` may carry ``local-bn`` (each device re-estimates BN statistics on its own
        unlabeled data first), ``fleet-stats`` (the replies' statistics become the fleet's
        aggregates, as a training round's do: a phase's first round then trains on the fleet's
        marginal and centroids of its starting model, not on each device's own) and ``reference``
        (each device also reports how often the model disagrees with its teacher; the teacher goes
        to a device that lacks it).
        """
        collect, reference = bool(config.get("fleet-stats", False)), bool(config.get("reference", False))
        devices = self.sample(server_round, self.policy.eval_clients, salt="evaluate")
        records = {P.ARRAYS: arrays} | self.evaluation_records()
        return self.messages(
            server_round, devices, records, dict(config), P.EVALUATE, False, collect, attach_teacher=reference
        )

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Extra records the evaluating device needs (masks or keep masks)."""
        return {}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Accuracy over the devices that answered: the example-weighted mean of their bounded claims (the
        accuracy over every test sample: what the fleet gets), and under a robust mode ``accuracy-robust``,
        the devices' accuracies combined by that mode (``combine_figure``: what one device's claim cannot
        move; a trimmed mean of honest devices drops the worst, so it is not the headline); and the
        label-free score where every device reported its predictions' statistics (``SharedStats.label_free``)."""

        def parse(device: int, content: RecordDict) -> tuple[dict[str, float], int, LabelFree | None]:
            # a device without a test split counts with weight 0 (not a rejection)
            tested = self.examples_bound(device, "test")
            n = check_examples(P.metric(content, P.NUM_EXAMPLES), minimum=0, maximum=tested)
            keys = [k for k in ("accuracy", "accuracy-as-exported") if k in P.metric_record(content)]
            figures = {k: check_percent(P.metric(content, k), k) for k in keys}
            aggregates = self.fleet.shared
            label_free = None
            if P.STATS in content:
                unlabeled = self.examples_bound(device, "train", "unlabeled")
                label_free = aggregates.parse_label_free(content, unlabeled, collect)
            if label_free is not None and "reference-disagreement" in P.metric_record(content):
                share = check_percent(P.metric(content, "reference-disagreement"), "reference-disagreement")
                disagreement.append((share, label_free.n))
            if label_free is not None and collect:  # last: only a reply that passed every check
                stats.append((aggregates.parse(content, label_free.n, evaluation=True), label_free.n))
            return figures, n, label_free

        collect = self.exchange.collect_stats
        stats: list[tuple[DeviceStats, int]] = []
        disagreement: list[tuple[float, int]] = []  # (%, unlabeled samples) per device
        results = self.validated(server_round, replies, parse)
        if stats:
            self.share_stats(stats)
        total = sum(n for _, n, _ in results)
        metrics: dict[str, MetricRecordValues] = {"devices": len(results), P.NUM_EXAMPLES: total}
        for key in sorted({k for acc, n, _ in results if n > 0 for k in acc}):  # over the devices that report it
            pairs = [(acc[key], n) for acc, n, _ in results if key in acc]
            metrics[key] = combine_figure(pairs, Defence("mean"))
            if self.fleet.defence.aggregation != "mean":
                metrics[f"{key}-robust"] = combine_figure(pairs, self.fleet.defence)
        label_free = [lf for _, _, lf in results if lf is not None]
        if label_free and len(label_free) == len(results):
            metrics |= label_free_metrics(label_free, self.fleet.defence)
        if disagreement and len(disagreement) == len(results):  # the export rule reads it: robust like the score
            metrics["reference-disagreement"] = combine_figure(disagreement, self.fleet.defence)
        if total == 0 and "label-free-score" not in metrics:
            return None  # nothing to report (no labeled test data and no label-free figures)
        return MetricRecord(metrics)

    def share_stats(self, items: Sequence[tuple[DeviceStats, int]]) -> dict[str, MetricRecordValues]:
        """Make the replies' (stats, n) the fleet's aggregates for the next round; returns the
        label-free signals logged per round (``SharedStats.update``)."""
        return self.fleet.shared.update(list(items), self.fleet.defence)

    def summary(self) -> None:
        """Log the strategy's settings (Flower's Strategy interface)."""
        log.info("%s: %s clients/round", type(self).__name__, self.policy.clients_per_round)
