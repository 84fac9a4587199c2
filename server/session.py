"""A federated run in progress, shared by its phases (``server.phases``), its starts
(``server.starts``) and its export choice (``server.selection``), which import it from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from admp.masks import MaskDict
from server.rounds import OnRound, RoundRunner, Weights
from server.setup import RunSetup
from strategies.fedadmp import FedKD
from strategies.fleet import Fleet, RoundPolicy


@dataclass
class Session:
    """A federated run in progress: its set-up, the fleet and the round runner."""

    run: RunSetup
    fleet: Fleet
    policy: RoundPolicy
    runner: RoundRunner
    selection: dict[str, Any] = field(default_factory=dict)  # the fine-tune phase's label-free choice

    def kd_strategy(self, weights: Weights, keep: MaskDict | None, local_epochs: int = 1, lr: float = 0.0) -> FedKD:
        """A FedKD strategy over this fleet (training, or only evaluation / BN statistics)."""
        return FedKD(weights=weights, keep=keep, local_epochs=local_epochs, lr=lr, fleet=self.fleet, policy=self.policy)

    def checkpointer(self, phase: str, extra: Callable[[], dict[str, Any]] = dict) -> OnRound:
        """The ``on_round`` callback: checkpoint (with the fields ``extra()`` gives at that moment),
        then False when the run is to pause."""

        def on_round(rnd: int, weights: Weights) -> bool:
            stats = self.fleet.shared.state_dict()
            delivery = self.fleet.delivery
            holders = {"hash": delivery.teacher_hash, "devices": sorted(delivery.holders)}
            privacy = self.fleet.privacy.state_dict() if self.fleet.privacy is not None else {}
            self.run.save_checkpoint(
                phase, rnd, weights, fleet_stats=stats, teacher_holders=holders, privacy=privacy, **extra()
            )
            return not self.run.stop_requested(rnd)

        return on_round
