"""The sections of the simulated fleet (``federation.faults``, ``federation.profiles``): injected faults
and device classes, with the CSV reader of the classes. Their behaviour is ``admp_fleet``'s."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

from admp_config.base import ConfigError, Section, SectionError

Corruption = Literal["scale", "huge_n", "zero_masks", "flip_duals", "nan", "float64", "complex", "noise", "bad_metrics"]
CORRUPTIONS: tuple[str, ...] = get_args(Corruption)
HOSTILE: tuple[Corruption, ...] = ("scale", "huge_n", "zero_masks", "flip_duals")  # the attacker
Fault = Literal["dropout", "straggler", "crash", "garbage"]
Probability = Annotated[float, Field(ge=0, lt=1)]


class FaultSpec(Section):
    """Faults injected into a simulated fleet; all off by default. Training messages only: the final
    evaluation asks every device, so faulty and clean runs report on the same test data."""

    dropout: Probability = 0.0  # per (round, device): the device does not answer
    straggler: Probability = 0.0  # per (round, device): the device is slow (see straggler_delay_s)
    straggler_delay_s: Annotated[float, Field(gt=0)] = 30.0  # a straggler's mean delay (exponential)
    deadline_s: Annotated[float, Field(ge=0)] = 0.0  # replies later than this are dropped; 0: round_timeout
    crash: Probability = 0.0  # per (round, device): the handler raises
    garbage: Probability = 0.0  # per (round, device): a corrupted reply (a drawn kind of CORRUPTIONS)
    hostile_devices: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)  # corrupt every reply
    hostile: list[Corruption] = Field(default_factory=lambda: list(HOSTILE))  # what hostile devices do
    scale: Annotated[float, Field(gt=0)] = 8.0  # "scale": the update (reply - global) times this

    @property
    def active(self) -> bool:
        """Whether any fault is injected."""
        return bool(self.dropout or self.straggler or self.crash or self.garbage or self.hostile_devices)


Positive = Annotated[float, Field(gt=0)]


class DeviceClass(Section):
    """One kind of device of the fleet."""

    name: str = "device"
    share: Positive = 1.0  # relative share of the fleet (normalised over the classes)
    samples_per_s: Positive = 500.0  # local training throughput (forward + backward, one sample)
    memory_mb: Positive = 512.0  # reported with the class (not enforced)
    downlink_mbps: Positive = 20.0
    uplink_mbps: Positive = 5.0
    joules_per_sample: Annotated[float, Field(ge=0)] = 0.01


class ProfileSpec(Section):
    """The fleet's device classes, the round deadline, availability and over-selection; the clock is off
    while ``classes`` and ``csv`` are empty, availability while it is ``always``."""

    classes: list[DeviceClass] = Field(default_factory=list)
    csv: str = ""  # a CSV with a header naming DeviceClass fields (name and share required)
    deadline_s: Annotated[float, Field(ge=0)] = 0.0  # 0: no deadline
    late_replies: Literal["drop", "accept"] = "drop"
    availability: Literal["always", "random", "diurnal", "trace"] = "always"  # who can be sampled in a round
    availability_p: Annotated[float, Field(gt=0, le=1)] = 1.0  # random: P(available); diurnal: the peak
    diurnal_low: Annotated[float, Field(ge=0, le=1)] = 0.2  # diurnal: P(available) at the trough
    diurnal_period: Annotated[int, Field(ge=2)] = 24  # diurnal: rounds per day; each device has its own phase
    availability_csv: str = ""  # trace: rows "device,round" (a header line) of the rounds a device is available
    over_selection: Annotated[float, Field(ge=0)] = 0.0  # ask ceil(k (1 + o)) devices, keep the k fastest

    @property
    def active(self) -> bool:
        """Whether the fleet has profiles (and so a clock)."""
        return bool(self.classes or self.csv)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileSpec:
        """Over-selection keeps the fastest replies, so it needs device classes to time them."""
        if self.over_selection > 0 and not self.active:
            raise SectionError("over_selection", "needs device classes ({p}classes or {p}csv) to time the replies")
        if self.availability == "trace" and not self.availability_csv:
            raise SectionError("availability_csv", "availability 'trace' needs a trace file")
        return self

    def resolved(self) -> list[DeviceClass]:
        """The classes, read from ``csv`` where given (ConfigError naming the file and row otherwise)."""
        return read_classes(Path(self.csv)) if self.csv else list(self.classes)


def read_classes(path: Path) -> list[DeviceClass]:
    """Device classes from a CSV file (one row a class; columns named as ``DeviceClass``'s fields)."""
    if not path.is_file():
        raise ConfigError(f"federation.profiles.csv: {path} not found")
    classes = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            try:
                values = {k: (v if k == "name" else float(v)) for k, v in row.items() if k and v not in (None, "")}
                classes.append(DeviceClass.model_validate(values))
            except (ValueError, TypeError) as exc:
                first = str(exc).splitlines()[0]
                raise ConfigError(f"federation.profiles.csv: {path} row {number}: {first}") from exc
    if not classes:
        raise ConfigError(f"federation.profiles.csv: {path} has no device classes")
    return classes
