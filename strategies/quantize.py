"""QuantKD: KD rounds that also pull the student's weights onto integer levels by ADMM (``admp.quantize``)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from admp.quantize import QuantState
from strategies import protocol as P
from strategies.fedadmp import FedKD, KdReply


class QuantKD(FedKD):
    """FedKD with ADMM weight quantization, federated like the masks.

    Each training message also carries ``quant`` (T = Z - U for every quantized weight, the shapes of
    the student's) and ``config["quant-rho"]``: the device adds (rho / 2) * ||W - T||^2 to its loss.
    After FedAvg the server takes the Z- and U-steps from the aggregated weights (``QuantState.step``);
    a new stage (fewer bits) starts from the global weights at its first round. Replies are checked as
    FedKD's (nothing more is sent back).
    """

    def __init__(self, *, quant: QuantState, first_round: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.quant, self.first_round = quant, first_round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round's stage if it is new, then send W, T and rho."""
        stage = self.quant.settings.stage_of(server_round - self.first_round)
        if stage != self.quant.stage:
            self.quant.start_stage(P.from_record(arrays), stage)
        self.config["quant-rho"] = self.quant.rho
        return super().configure_train(server_round, arrays, config, grid)

    def train_records(self, server_round: int) -> dict[str, ArrayRecord]:
        """The penalty's targets T = Z - U."""
        return {P.QUANT: P.to_record(self.quant.targets())}

    def combine(self, server_round: int, parsed: list[KdReply]) -> tuple[ArrayRecord, MetricRecord]:
        """FedAvg as FedKD, then the ADMM step from the aggregated weights."""
        record, metrics = super().combine(server_round, parsed)
        weights = P.from_record(record)
        self.quant.step(weights)
        metrics["quant-bits"] = min(self.quant.bits().values(), default=0)
        metrics["quant-rho"] = self.quant.rho
        metrics["quant-residual"] = self.quant.residual(weights)
        return record, metrics
