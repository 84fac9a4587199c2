"""What every strategy of a run shares: the fleet (devices, seed, teacher delivery, rejections, the
fleet's aggregates and defence) and the round policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

from strategies.privacy import Privacy
from strategies.robust import Defence
from strategies.roster import FixedRoster, Roster
from strategies.selftraining import SharedStats


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

    @property
    def total_sends(self) -> int:
        """Teacher copies sent so far, over all devices."""
        return sum(self.sends.values())


@dataclass
class Fleet:
    """What every strategy of a run shares: the devices, the seed, the teacher and the rejections.

    ``devices`` is the fleet's ``Roster`` (a simulation's virtual devices on its slots), or a
    deployed fleet's {stable device id: Flower node id}; ``roster`` is it as a ``Roster``.
    """

    devices: Roster | dict[int, int]
    seed: int
    delivery: Delivery
    base_config: dict[str, Any]  # sent with every message (scenario, hyper-parameters)
    rejections: list[Rejection] = field(default_factory=list)
    shared: SharedStats = field(default_factory=SharedStats)  # the fleet's self-training aggregates
    defence: Defence = field(default_factory=Defence)  # how replies are bounded and combined
    capacity: Callable[[int], tuple[int, int]] | None = None  # device -> (train, test) samples it holds;
    #   None (devices whose data the server does not know): 10 x the round's median claim is the bound
    available: Callable[[int, int], bool] | None = None  # (round, device) -> may it train this round; None: all
    over_selection: float = 0.0  # training rounds ask ceil(k (1 + o)) devices (the clock keeps the k fastest)
    privacy: Privacy | None = None  # client-level DP of the training rounds (federation.privacy); None: off

    def __post_init__(self) -> None:
        self.roster = self.devices if isinstance(self.devices, Roster) else FixedRoster(self.devices)

    def rejected(self, server_round: int) -> int:
        """How many replies of ``server_round`` were rejected so far."""
        return sum(1 for r in self.rejections if r.round == server_round)


@dataclass(frozen=True)
class RoundPolicy:
    """How many devices a round asks, and how many valid replies it needs."""

    clients_per_round: int  # devices sampled per training round
    min_replies: int = 1  # a round with fewer valid replies keeps the previous global state
    eval_clients: int = 0  # devices asked to evaluate (and for BN statistics); 0: every device
