"""Which Flower node carries a device's messages.

A deployed fleet is a fixed map: every real device is its own SuperNode and names itself once
(``server.fleet.discover_devices``). A simulated fleet is not: its virtual devices are ids
``0 .. N-1`` held by nobody until sampled, and a small pool of simulation SuperNodes (``slots``)
runs whichever devices a round asks, each message naming its device. Start-up and every round then
cost the same for 10 or 100,000 devices: no SuperNode per device, no identity query to every one,
nothing per device on the server beyond what a sampled device needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


class Roster(ABC):
    """The devices of a fleet and the node each one is reached through in an exchange."""

    @abstractmethod
    def __len__(self) -> int:
        """How many devices the fleet has."""

    @abstractmethod
    def ids(self) -> Sequence[int]:
        """Every device id, ascending."""

    @abstractmethod
    def node_count(self) -> int:
        """How many Flower nodes carry the fleet."""

    @abstractmethod
    def route(self, devices: Sequence[int]) -> list[int]:
        """One node per device for one exchange, no node twice (a node's replies name one device)."""


@dataclass
class FixedRoster(Roster):
    """Devices that are their own nodes: {device id: node id}, as discovered."""

    devices: dict[int, int]

    def __len__(self) -> int:
        """How many devices answered discovery."""
        return len(self.devices)

    def ids(self) -> Sequence[int]:
        """The discovered device ids, ascending."""
        return sorted(self.devices)

    def node_count(self) -> int:
        """One node per device."""
        return len(self.devices)

    def route(self, devices: Sequence[int]) -> list[int]:
        """Each device's own node (KeyError for a device the fleet does not have)."""
        return [self.devices[d] for d in devices]


@dataclass
class SlotRoster(Roster):
    """``size`` virtual devices run on a pool of simulation nodes (slots).

    An exchange's devices take distinct slots in turn, continuing where the last exchange stopped,
    so the work spreads over the pool. Which slot runs a device changes nothing it computes: its
    data, seeds and own state are keyed by its device id (``clients.device``).
    """

    size: int
    slots: list[int]
    cursor: int = field(default=0)

    def __post_init__(self) -> None:
        if self.size < 1 or not self.slots:
            raise ValueError(f"a simulated fleet needs devices and nodes (got {self.size} devices, {len(self.slots)})")

    def __len__(self) -> int:
        """How many virtual devices the fleet has."""
        return self.size

    def ids(self) -> Sequence[int]:
        """``0 .. size - 1``."""
        return range(self.size)

    def node_count(self) -> int:
        """The slots."""
        return len(self.slots)

    def route(self, devices: Sequence[int]) -> list[int]:
        """Distinct slots for ``devices`` (ValueError when one exchange asks more devices than slots)."""
        if len(devices) > len(self.slots):
            raise ValueError(
                f"one exchange asks {len(devices)} devices but the simulation has {len(self.slots)} nodes "
                "(federation.ray.sim_nodes)"
            )
        outside = [d for d in devices if not 0 <= d < self.size]
        if outside:
            raise KeyError(f"devices outside the fleet of {self.size}: {outside}")
        start = self.cursor
        self.cursor = (self.cursor + len(devices)) % len(self.slots)
        return [self.slots[(start + i) % len(self.slots)] for i in range(len(devices))]
