"""One round runner for every phase of a federated run: train, aggregate, evaluate, log, checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MetricRecordValues
from flwr.serverapp import Grid
from rich.console import Console

from admp_config.privacy import SecureSpec
from server.clock import FleetClock
from server.exchange import payload_bytes, send_and_wait
from server.report import RunDirectory
from server.secure import secure_exchange
from strategies import protocol as P
from strategies.base import FleetStrategy
from strategies.secure import SecureRounds

Weights = dict[str, torch.Tensor]
LABEL_FREE = ("label-free-score", "class-balance", "prediction-entropy")  # strategies.selftraining.label_free_metrics
OnRound = Callable[[int, Weights], bool]  # after each round: checkpoint; False pauses the run


def _number(value: MetricRecordValues, name: str) -> float:
    """A metric of an aggregated record as a float: RecordTypeError when it is a list."""
    if not isinstance(value, (int, float)):
        raise P.RecordTypeError(f"{P.METRICS}.{name}: expected a number, got a {type(value).__name__}")
    return float(value)


@dataclass
class RoundRunner:
    """Drives rounds through a Flower ``Grid`` and writes one metrics row per round."""

    grid: Grid
    run_dir: RunDirectory
    console: Console
    timeout: float  # seconds to wait for a round's replies
    eval_every: int  # federated evaluation every this many rounds (and at a phase's last round)
    local_bn: bool = False  # per-round evaluations re-estimate BN on each device first (bn_recalibration local)
    first_round_at: float | None = None  # wall clock of the first round, for start-up time
    last_figures: dict[str, float] = field(default_factory=dict)  # the last round's evaluation
    aggregated: bool = False  # whether the last round aggregated any reply
    clock: FleetClock | None = None  # the simulated fleet clock (federation.profiles), if any
    privacy_stop: int | None = None  # the round before which privacy.max_epsilon stopped training
    secure: SecureSpec | None = None  # training rounds through SecAgg+ (federation.secure_aggregation)

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Send and wait for the replies (or the timeout)."""
        return send_and_wait(self.grid, messages, self.timeout)

    def evaluate(self, strategy: FleetStrategy, rnd: int, weights: Weights, local_bn: bool = False) -> float | None:
        """Federated accuracy of ``weights`` (example-weighted over the devices that answered).

        ``local_bn``: each device first re-estimates BN statistics on its own unlabeled data.
        """
        return self.evaluate_all(strategy, rnd, weights, local_bn).get("accuracy")

    def evaluate_all(
        self,
        strategy: FleetStrategy,
        rnd: int,
        weights: Weights,
        local_bn: bool = False,
        fleet_stats: bool = False,
        reference: bool = False,
    ) -> dict[str, float]:
        """Every figure of a federated evaluation: ``accuracy``, with ``local_bn`` also
        ``accuracy-as-exported`` (the model as received, before the device's BN step), and the
        label-free ones (``label-free-score``, ``class-balance``, ``prediction-entropy``), and over how many
        ``evaluated_devices`` and ``evaluated_examples`` (a sample: ``eval_clients``); {} if none.
        ``fleet_stats``: the replies' statistics also become the fleet's aggregates (a phase's start);
        ``reference``: also ``reference-disagreement``, the % of the fleet's unlabeled samples on which the
        model and the devices' teacher predict different classes."""
        shares = fleet_stats and strategy.fleet.shared.active and strategy.fleet.privacy is None  # not a release
        config = ConfigRecord({"local-bn": local_bn, "fleet-stats": shares, "reference": reference})
        msgs = list(strategy.configure_evaluate(rnd, P.to_record(weights), config, self.grid))
        result = strategy.aggregate_evaluate(rnd, self.exchange(msgs))
        if result is None:
            return {}
        wanted = (*LABEL_FREE, "reference-disagreement")
        figures = {k: _number(v, k) for k, v in result.items() if k.startswith("accuracy") or k in wanted}
        return figures | {
            "evaluated_devices": _number(result["devices"], "devices"),
            "evaluated_examples": _number(result[P.NUM_EXAMPLES], P.NUM_EXAMPLES),
        }

    def run_rounds(
        self,
        strategy: FleetStrategy,
        phase: str,
        weights: Weights,
        rounds: range,
        on_round: OnRound,
        evaluate_last: bool = True,
        whole_phase: bool = True,
    ) -> tuple[Weights, bool]:
        """Play ``rounds``; returns the final weights and False when ``on_round`` paused the run.

        A phase none of whose rounds aggregated a reply is an error (RuntimeError naming the phase and
        the last rejections), not a run that reports its starting model as if it had trained. Checked
        where ``rounds`` is the ``whole_phase`` (a resumed phase's earlier rounds are not counted here,
        so it is not checked: a resumed run behaves as the uninterrupted one)."""
        aggregated = 0
        for rnd in rounds:
            if self.budget_spent(strategy, rnd):
                break
            evaluate = rnd % self.eval_every == 0 or (evaluate_last and rnd == rounds[-1])
            weights = self.play_round(strategy, phase, rnd, weights, evaluate)
            aggregated += self.aggregated
            if not on_round(rnd, weights):
                return weights, False
        if whole_phase and len(rounds) and not aggregated and not self.privacy_stop:
            last = "; ".join(f"device {r.device}: {r.reason}" for r in strategy.fleet.rejections[-3:])
            raise RuntimeError(
                f"{phase} phase: none of its {len(rounds)} rounds had enough valid replies "
                f"(min_replies {strategy.policy.min_replies}); last rejections: {last or 'none'}"
            )
        return weights, True

    def budget_spent(self, strategy: FleetStrategy, rnd: int) -> bool:
        """Whether training stops here because round ``rnd`` would pass ``privacy.max_epsilon`` (every
        later round of the run is skipped too; the run goes on to its merge, export and report)."""
        privacy = strategy.fleet.privacy
        if privacy is None or privacy.allows_round():
            return False
        if self.privacy_stop is None:
            self.privacy_stop = rnd
            self.console.print(
                f"[yellow]privacy budget: training stops before round {rnd} (epsilon {privacy.epsilon():.3f})"
            )
        return True

    def play_round(self, strategy: FleetStrategy, phase: str, rnd: int, weights: Weights, evaluate: bool) -> Weights:
        """Train, aggregate, evaluate and log one round; returns the (possibly unchanged) weights."""
        start = time.perf_counter()
        self.first_round_at = self.first_round_at or time.time()
        delivery = strategy.fleet.delivery
        sends_before = delivery.total_sends
        msgs = list(strategy.configure_train(rnd, P.to_record(weights), ConfigRecord(), self.grid))
        timing: dict[str, float] = {}
        if self.secure is not None and isinstance(strategy, SecureRounds):  # the server sees only the sum
            result = secure_exchange(self.grid, msgs, self.secure, rnd, self.timeout, self._max_weight(strategy))
            replies, down, up = result.replies, result.bytes_down, result.bytes_up
            new_arrays, metrics = strategy.aggregate_secure(rnd, replies, result.mean)
        else:
            replies = self.exchange(msgs)
            if self.clock is not None:  # stragglers past the deadline are dropped before aggregation
                replies, timing = self.clock.time_round(strategy, rnd, msgs, replies)
            new_arrays, metrics = strategy.aggregate_train(rnd, replies)
            down, up = payload_bytes(msgs), payload_bytes(replies)
        self.aggregated = new_arrays is not None
        if new_arrays is not None:
            weights = P.from_record(new_arrays)
        sends = delivery.total_sends - sends_before
        row: dict[str, Any] = {
            "phase": phase,
            "step": rnd,
            "round": rnd,
            "clients": len(msgs),
            "bytes_down": down,
            "bytes_up": up,
            "teacher_sends": sends,
            "bytes_down_teacher": sends * delivery.teacher.count_bytes(),
        }
        row |= {k.replace("-", "_"): _number(v, k) for k, v in (metrics or {}).items()} | timing
        figures = self.evaluate_all(strategy, rnd, weights, self.local_bn) if evaluate else {}
        self.last_figures = figures
        row["target_acc"] = figures.get("accuracy")
        row |= {k.replace("-", "_"): figures.get(k) for k in LABEL_FREE}
        row["rejected"] = strategy.fleet.rejected(rnd)  # the round's training and evaluation replies
        row["round_seconds"] = round(time.perf_counter() - start, 3)
        self.run_dir.log_metrics(row)
        self._print(row)
        return weights

    def _max_weight(self, strategy: FleetStrategy) -> float:
        """SecAgg+'s max_weight for a round: ``secure_aggregation.max_weight``, else the largest training
        split among the asked devices where the server knows their sizes, else 1,000 (Flower's default)."""
        if self.secure is not None and self.secure.max_weight > 0:
            return self.secure.max_weight
        bounds = [strategy.examples_bound(device, "train") for device in strategy.exchange.asked.values()]
        known = [b for b in bounds if b is not None]
        return float(max(known)) if known else 1000.0

    def _print(self, row: dict[str, Any]) -> None:
        acc = f"{row['target_acc']:.2f}" if row["target_acc"] is not None else "-"
        self.console.print(
            f"\\[{row['phase']}] round {row['round']:>3}  acc {acc:>6}  ok {int(row.get('valid_replies', 0))}/"
            f"{row['clients']}  D {row.get('divergence', float('nan')):.3f}  down {row['bytes_down'] / 1e6:.2f}MB"
            f"  up {row['bytes_up'] / 1e6:.2f}MB  {row['round_seconds']:.1f}s",
            soft_wrap=True,
        )
