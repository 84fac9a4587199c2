"""QuantKD: KD rounds that also pull the student's weights onto integer levels by ADMM (``admp.quantize``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from admp.quantize import QuantState, TensorDict
from strategies import protocol as P
from strategies.aggregation import ReplyError, check_arrays
from strategies.fedadmp import FedKD, KdReply
from strategies.robust import aggregate


@dataclass
class QuantReply(KdReply):
    """A KD reply plus the device's own quantization dual U_k (``quantize.dual: per_client``)."""

    u: TensorDict


def check_quant_dual(u: TensorDict, weights: TensorDict, z: TensorDict, steps: int) -> None:
    """A device's dual: the shapes of Z, finite, and |U_k| <= (steps + 1) * (max|W_k| + max|Z|) per weight:
    each dual step adds W_k - Z (a rho increase only shrinks U)."""
    check_arrays(u, {k: tuple(v.shape) for k, v in z.items()}, P.QUANT_DUAL)
    for name, dual in u.items():
        limit = (steps + 1) * (float(weights[name].abs().max()) + float(z[name].abs().max()))
        if float(dual.abs().max()) > limit + 1e-6:
            raise ReplyError(f"{P.QUANT_DUAL}.{name}: |U| up to {float(dual.abs().max()):.4g}, allowed {limit:.4g}")


class QuantKD(FedKD):
    """FedKD with ADMM weight quantization, federated like the masks.

    Each training message also carries ``quant`` and ``config["quant-rho"]``, ``quant-dual``,
    ``quant-stage`` and ``quant-steps`` (Z-steps of the stage so far). Global dual: ``quant`` is T = Z - U
    for every quantized weight and the device adds (rho / 2) * ||W - T||^2 to its loss; after FedAvg the
    server takes the Z- and U-steps from the aggregated weights (``QuantState.step``). Per-client duals:
    ``quant`` is Z, each device keeps its own U_k (advanced on a new Z, reset on a new stage) and trains
    towards Z - U_k, and sends U_k back (``qdual``, checked by ``check_quant_dual``); the server's
    Z = proj(aggregate_k(W_k + U_k)) by the fleet's aggregation (``QuantState.step_consensus``). A new
    stage (fewer bits) starts from the global weights at its first round.
    """

    def __init__(self, *, quant: QuantState, first_round: int, dual: str = "global", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.quant, self.first_round, self.dual = quant, first_round, dual

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round's stage if it is new, then send W, the targets and the penalty's settings."""
        stage = self.quant.settings.stage_of(server_round - self.first_round)
        if stage != self.quant.stage:
            self.quant.start_stage(P.from_record(arrays), stage)
        self.config |= {
            "quant-rho": self.quant.rho,
            "quant-dual": self.dual,
            "quant-stage": self.quant.stage,
            "quant-steps": self.quant.steps,
        }
        return super().configure_train(server_round, arrays, config, grid)

    def train_records(self, server_round: int) -> dict[str, ArrayRecord]:
        """The penalty's targets: T = Z - U (Z itself with per-client duals, where the server's U is zero)."""
        return {P.QUANT: P.to_record(self.quant.targets())}

    def parse_train_reply(self, device: int, content: RecordDict) -> KdReply:
        """FedKD's checks, and with per-client duals the device's U_k (``check_quant_dual``)."""
        reply = super().parse_train_reply(device, content)
        if self.dual != "per_client":
            return reply
        u = P.from_record(P.array_record(content, P.QUANT_DUAL))
        check_quant_dual(u, reply.weights, self.quant.z, self.quant.steps)
        return QuantReply(reply.weights, reply.n, reply.divergence, reply.stats, u)

    def combine(self, server_round: int, parsed: list[KdReply]) -> tuple[ArrayRecord, MetricRecord]:
        """FedAvg as FedKD, then the ADMM step: from the aggregated weights, or the devices' W_k + U_k."""
        record, metrics = super().combine(server_round, parsed)
        weights = P.from_record(record)
        if self.dual == "per_client":
            duals = [r for r in parsed if isinstance(r, QuantReply)]
            consensus = [({k: r.weights[k] + r.u[k] for k in r.u}, r.n) for r in duals]
            self.quant.step_consensus(aggregate(consensus, self.fleet.defence))
        else:
            self.quant.step(weights)
        metrics["quant-bits"] = min(self.quant.bits().values(), default=0)
        metrics["quant-rho"] = self.quant.rho
        metrics["quant-residual"] = self.quant.residual(weights)
        return record, metrics
