"""FedADMP: the mask-phase strategy of federated ADMP, and FedKD for plain KD rounds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.serverapp import Grid

from admp.masks import MaskDict
from admp.state import AdmpState
from strategies import protocol as P
from strategies.aggregation import (
    ReplyError,
    check_arrays,
    check_divergence,
    check_examples,
    check_range,
    check_update,
    specs_of,
)
from strategies.base import log
from strategies.fleet import Fleet, RoundPolicy
from strategies.privacy import private_round
from strategies.robust import Defence, aggregate
from strategies.secure import SecureRounds
from strategies.selftraining import DeviceStats

TensorDict = dict[str, torch.Tensor]


@dataclass
class KdReply:
    """One validated training reply: the device's weights, its example count and divergence."""

    weights: TensorDict
    n: int  # num-examples
    divergence: float
    stats: DeviceStats  # the mean prediction and feature sums, where the fleet shares them


@dataclass
class AdmpReply(KdReply):
    """One validated mask-phase reply: a KD reply plus the device's masks."""

    m: MaskDict
    s: MaskDict
    u: MaskDict  # per-client dual U_k; empty with the global dual


def fedavg(
    replies: Sequence[KdReply], defence: Defence, reference: TensorDict | None
) -> tuple[TensorDict, dict[str, MetricRecordValues]]:
    """The replies' weights combined by the run's aggregation (FedAvg by default), and the round's
    metrics: valid replies, examples, mean divergence."""
    weights = aggregate([(r.weights, r.n) for r in replies], defence, reference)
    return weights, round_metrics(replies)


def round_metrics(replies: Sequence[KdReply]) -> dict[str, MetricRecordValues]:
    """A training round's metrics: valid replies, examples, mean divergence."""
    return {
        "valid-replies": len(replies),
        P.NUM_EXAMPLES: sum(r.n for r in replies),
        "divergence": weighted_mean((r.divergence, r.n) for r in replies),
    }


def check_weights(weights: TensorDict, reference: TensorDict, defence: Defence) -> None:
    """A reply's model: the global model's keys, shapes and dtypes, finite and bounded values, and an
    update no longer than ``defence.max_update_ratio`` x the global model's norm."""
    check_arrays(weights, specs_of(reference), "arrays")
    check_update(weights, reference, defence.max_update_ratio, "arrays")


def check_alive(m: MaskDict) -> None:
    """Every group keeps some channel open: a reply whose relaxed mask shuts a whole group (all
    entries ~0) proposes pruning what the Z-step always keeps (k_g >= 1), which no descent step on
    the ADMM penalty produces."""
    for group, tensor in m.items():
        if tensor.numel() and float(tensor.max()) < 1e-3:
            raise ReplyError(f"masks.m.{group}: every channel closed (max {float(tensor.max()):.3g})")


def check_duals(u: MaskDict, z_steps: int) -> None:
    """|U_k| <= Z-steps + 1: each dual step adds m - Z in [-1, 1] (a rho increase only shrinks U)."""
    check_range(u, -(z_steps + 1.0), z_steps + 1.0, "masks.u")


def weighted_mean(values: Iterable[tuple[float, int]]) -> float:
    """sum_k n_k v_k / sum_k n_k of (value, n) pairs (0 when there are none)."""
    pairs = list(values)
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else 0.0


class FedADMP(SecureRounds[AdmpReply]):
    """Federated ADMP mask phase.

    Sends (message type ``train``): ``arrays`` (dense student), ``masks`` with ``m.*``, ``s.*``,
    ``z.*`` (and ``u.*`` with the global dual), ``teacher`` until the device holds it, and
    ``config`` (``server-round``, ``rho``, ``dual``, ``z-steps``, ``local_epochs``, hyper-parameters,
    scenario). Expects back ``arrays`` (the global model's keys, shapes and dtypes, finite, |x| <= 1e6,
    an update within ``max_update_ratio`` of the global norm), ``masks`` with ``m.*`` in [0, 1] and no
    group shut once Z exists, ``s.*`` in [s_min, 1] (and ``u.*`` with per-client duals, |U| <= Z-steps
    + 1), and ``metrics`` with ``num-examples`` a positive integer the device can hold and a finite
    ``divergence``; from an asked node, once. Anything else is rejected (logged, counted, listed).

    Aggregation: W, m, s by the fleet's ``Defence`` (weighted mean by default; clip, median or
    trimmed mean, ``strategies.robust``) into ``state``; after ``warmup_rounds`` every round steps
    the ADMM state (``AdmpState.admm_step``): from the aggregated m with one global dual, or from
    the aggregate of m_k + U_k with per-client duals (consensus ADMM).
    """

    def __init__(
        self,
        *,
        weights: TensorDict,
        state: AdmpState,
        s_min: float,
        warmup_rounds: int,
        dual: str,
        local_epochs: int,
        fleet: Fleet,
        policy: RoundPolicy,
    ) -> None:
        super().__init__(fleet=fleet, policy=policy)
        self.sent = {k: v.detach().clone() for k, v in weights.items()}  # the global model last sent
        self.mask_shapes = {g: tuple(v.shape) for g, v in state.m.items()}
        self.state = state
        self.s_min, self.warmup_rounds, self.dual, self.local_epochs = s_min, warmup_rounds, dual, local_epochs

    def summary(self) -> None:
        """Log the strategy's settings."""
        st = self.state.settings
        log.info(
            "FedADMP: p=%s, %s clients/round, dual=%s, warm-up %s rounds, rho %s x%s <= %s",
            st.prune_ratio,
            self.policy.clients_per_round,
            self.dual,
            self.warmup_rounds,
            st.rho0,
            st.rho_gamma,
            st.rho_max,
        )

    def mask_record(self) -> ArrayRecord:
        """The global masks as sent to devices."""
        st = self.state
        if self.dual == "global":
            return P.masks_to_record(m=st.m, s=st.s, z=st.z, u=st.u)
        return P.masks_to_record(m=st.m, s=st.s, z=st.z)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample devices and send W, m, s, Z (U), rho; the teacher only to devices without it."""
        devices = self.sample(server_round, self.policy.clients_per_round)
        self.sent = P.from_record(arrays)
        records = {P.ARRAYS: arrays, P.MASKS: self.mask_record()}
        extra = dict(config) | {
            "phase": "mask",
            "rho": self.state.rho,
            "dual": self.dual,
            "z-steps": self.state.z_steps,
            "local_epochs": self.local_epochs,
        }
        return self.messages(server_round, devices, records, extra, P.TRAIN_ADMP, with_teacher=True)

    def parse_train_reply(self, device: int, content: RecordDict) -> AdmpReply:
        """Validate one reply: keys, shapes, dtypes, finite and bounded values, the update's size, mask
        ranges (no group shut), dual bounds, and an example count the device can hold."""
        weights = P.from_record(P.array_record(content, P.ARRAYS))
        check_weights(weights, self.sent, self.fleet.defence)
        masks = P.array_record(content, P.MASKS)
        m, s, u = (P.record_to_masks(masks, k) for k in ("m", "s", "u"))
        check_arrays(m, self.mask_shapes, "masks.m")
        check_arrays(s, self.mask_shapes, "masks.s")
        check_range(m, 0.0, 1.0, "masks.m")
        check_range(s, self.s_min, 1.0, "masks.s")
        if self.state.z_steps:  # once Z exists its k_g ones pull m up; in the warm-up only L1 acts on m
            check_alive(m)
        if self.dual == "per_client":
            check_arrays(u, self.mask_shapes, "masks.u")
            check_duals(u, self.state.z_steps)
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=self.examples_bound(device, "train"))
        stats = self.fleet.shared.parse(content, n)
        return AdmpReply(weights, n, check_divergence(P.metric(content, "divergence")), stats, m, s, u)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of W, m, s; then the ADMM step of the state after the warm-up."""
        parsed = self.validated(server_round, replies, self.parse_train_reply)
        if len(parsed) < self.policy.min_replies:
            return None, MetricRecord({"valid-replies": len(parsed), "rejected": self.fleet.rejected(server_round)})
        return self.combine(server_round, parsed)

    def combine(self, server_round: int, parsed: list[AdmpReply]) -> tuple[ArrayRecord, MetricRecord]:
        """W, m, s of the validated replies combined, the ADMM step after the warm-up."""
        defence = self.fleet.defence
        if self.fleet.privacy is not None:
            weights, masks, extra = private_round(self, server_round, parsed, {"m": self.state.m, "s": self.state.s})
            metrics = round_metrics(parsed) | extra
            self.state.m = {g: v.clamp(0.0, 1.0) for g, v in masks["m"].items()}
            self.state.s = {g: v.clamp(self.s_min, 1.0) for g, v in masks["s"].items()}
        else:
            weights, metrics = fedavg(parsed, defence, self.sent)
            metrics |= self.share_stats([(r.stats, r.n) for r in parsed])
            self.state.m = aggregate([(r.m, r.n) for r in parsed], defence, self.state.m)
            self.state.s = aggregate([(r.s, r.n) for r in parsed], defence, self.state.s)
        if server_round > self.warmup_rounds:
            consensus = None
            if self.dual == "per_client":
                consensus = aggregate([({g: r.m[g] + r.u[g] for g in r.m}, r.n) for r in parsed], defence)
            self.state.admm_step(consensus)
        metrics["rejected"] = self.fleet.rejected(server_round)
        return P.to_record(weights), MetricRecord(metrics | self.state.metrics())

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Evaluating devices gate the dense student with the global m (s = 1)."""
        return {P.MASKS: P.masks_to_record(m=self.state.m)}


class FedKD(SecureRounds[KdReply]):
    """Federated KD adaptation of a plain student (dense, or pruned as given by ``keep``).

    Sends (message type ``train.kd``): ``arrays``, ``masks`` with ``keep.*`` when pruned (the
    architecture), ``teacher`` until the device holds it, and ``config`` (``lr``,
    ``local_epochs``). Expects back ``arrays`` under the same checks as FedADMP's (keys, shapes,
    dtypes, bounded values and update) and ``metrics`` with ``num-examples`` and ``divergence``;
    combined by the fleet's ``Defence``. Used for the fine-tune phase of FedADMP, for the fedkd
    and naive baselines, and (with no training) for evaluation and BN statistics.
    """

    def __init__(
        self,
        *,
        weights: TensorDict,
        keep: MaskDict | None,
        local_epochs: int = 1,
        lr: float = 0.0,
        fleet: Fleet,
        policy: RoundPolicy,
        config: dict[str, object] | None = None,
    ) -> None:
        super().__init__(fleet=fleet, policy=policy)
        self.sent = {k: v.detach().clone() for k, v in weights.items()}  # the global model last sent
        self.keep, self.local_epochs, self.lr = keep, local_epochs, lr
        self.config = dict(config or {})  # sent with every training message, over the fleet's base config

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("FedKD: %s clients/round, pruned=%s", self.policy.clients_per_round, self.keep is not None)

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Devices rebuild the pruned architecture from the keep masks."""
        return {P.MASKS: P.masks_to_record(keep=self.keep)} if self.keep is not None else {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample devices and send the student (and keep masks); the teacher only once."""
        devices = self.sample(server_round, self.policy.clients_per_round)
        self.sent = P.from_record(arrays)
        records = {P.ARRAYS: arrays} | self.evaluation_records() | self.train_records(server_round)
        extra = dict(config) | self.config | {"phase": "kd", "local_epochs": self.local_epochs, "lr": self.lr}
        return self.messages(server_round, devices, records, extra, P.TRAIN_KD, with_teacher=True)

    def train_records(self, server_round: int) -> dict[str, ArrayRecord]:
        """Records a training message carries besides the student (none here; see QuantKD)."""
        return {}

    def parse_train_reply(self, device: int, content: RecordDict) -> KdReply:
        """Validate one reply: weights' keys, shapes, dtypes, bounded values and update, and an
        example count the device can hold."""
        weights = P.from_record(P.array_record(content, P.ARRAYS))
        check_weights(weights, self.sent, self.fleet.defence)
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=self.examples_bound(device, "train"))
        divergence = check_divergence(P.metric(content, "divergence"))
        return KdReply(weights, n, divergence, self.fleet.shared.parse(content, n))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the student's weights."""
        parsed = self.validated(server_round, replies, self.parse_train_reply)
        if len(parsed) < self.policy.min_replies:
            return None, MetricRecord({"valid-replies": len(parsed), "rejected": self.fleet.rejected(server_round)})
        return self.combine(server_round, parsed)

    def combine(self, server_round: int, parsed: list[KdReply]) -> tuple[ArrayRecord, MetricRecord]:
        """The validated replies' weights combined (and shared statistics updated)."""
        if self.fleet.privacy is not None:
            weights, _, extra = private_round(self, server_round, parsed, {})
            metrics = round_metrics(parsed) | extra
        else:
            weights, metrics = fedavg(parsed, self.fleet.defence, self.sent)
            metrics |= self.share_stats([(r.stats, r.n) for r in parsed])
        metrics["rejected"] = self.fleet.rejected(server_round)
        return P.to_record(weights), MetricRecord(metrics)
