"""Cross-domain tasks: a labeled source and a fleet of unlabeled, shifted target devices.

``build_task(spec, seed)`` reads the data named by a ``DataSpec`` and splits the target pool into
devices (IID, Dirichlet label skew, or natural groups such as HAPT subjects). A device's data,
with its own IoT shift mix, is built on demand by ``task.device(i)`` from the seed and the device
index, so nothing per device is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from admp_config.choices import COLOUR_SHIFTS, DATASETS, IMAGE_SHIFTS, PARTITIONS, SENSOR_SHIFTS, Arch, Dataset
from admp_config.sections import DataSpec
from admp_config.seeding import numpy_rng, torch_generator
from admp_data import partition as part
from admp_data.images import load_image_folder
from admp_data.npz import load_npz
from admp_data.shifts import ShiftSpec, apply_shift_mix, random_shift_mix
from admp_data.sources import DataError, Split, load_embedded_digits, load_hapt, load_mnist, load_usps, standardise

DEFAULT_ARCH: dict[Dataset, Arch] = {
    "digits": "lenet",
    "mnist_usps": "lenet",
    "usps_mnist": "lenet",
    "mnist_mnist": "lenet",
    "hapt": "cnn1d",
    "imagefolder": "resnet",
}  # model.arch: auto; a user's npz file gets the family its samples' shape calls for (arch_for_shape)
assert set(DEFAULT_ARCH) | {"npz"} == set(DATASETS), "every named dataset needs a default architecture"


def arch_for_shape(sample_shape: tuple[int, ...]) -> Arch:
    """``model.arch: auto`` for samples of this shape: feature vectors (D,) -> mlp, windows (C, T) ->
    cnn1d, grey images (1, H, W) -> lenet, colour images (C > 1) -> resnet."""
    if len(sample_shape) == 1:
        return "mlp"
    if len(sample_shape) == 2:
        return "cnn1d"
    return "lenet" if sample_shape[0] == 1 else "resnet"


@dataclass
class Device:
    """One target device: unlabeled training data (labels kept for evaluation only) and a test split."""

    index: int
    mix: list[ShiftSpec]
    train: Split
    test: Split


@dataclass
class CrossDomainTask:
    """Source splits, the target pools and how they are cut into devices."""

    name: str
    num_classes: int
    source_train: Split
    source_val: Split
    target_train: Split  # unshifted target pool
    target_test: Split
    train_parts: list[np.ndarray] | None  # None: each device draws its own samples (see draw)
    test_parts: list[np.ndarray] | None
    seed: int
    num_devices: int
    shift_kinds: tuple[str, ...] = ()  # empty: no synthetic shift
    max_shifts: int = 2
    severity_range: tuple[int, int] = (2, 4)
    draw: int = 0  # samples per device when parts are drawn per device
    test_fraction: float = 0.3

    def mix(self, i: int) -> list[ShiftSpec]:
        """Device i's shift mix: a pure function of the seed and i."""
        if not self.shift_kinds:
            return []
        return random_shift_mix(
            torch_generator(self.seed, "mix", i), self.shift_kinds, self.max_shifts, self.severity_range
        )

    def device_indices(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices into target_train, test indices into target_test) of device i."""
        if not 0 <= i < self.num_devices:
            raise IndexError(f"device {i} out of range for a fleet of {self.num_devices}")
        if self.train_parts is not None and self.test_parts is not None:
            return self.train_parts[i], self.test_parts[i]
        drawn = part.sample_device(len(self.target_train), self.draw, numpy_rng(self.seed, "draw", i))
        return part.split_train_test(drawn, self.test_fraction, numpy_rng(self.seed, "draw-split", i))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (6, 128)."""
        return tuple(self.source_train.x.shape[1:])

    def device(self, i: int) -> Device:
        """Device i's data with its shift mix applied (train and test share the device's shift)."""
        train_idx, test_idx = self.device_indices(i)
        train, test = self.target_train.subset(train_idx), self.target_test.subset(test_idx)
        mix = self.mix(i)
        if mix:
            gen = torch_generator(self.seed, "shift", i)
            both = apply_shift_mix(torch.cat([train.x, test.x]), mix, gen)
            train, test = Split(both[: len(train)], train.y), Split(both[len(train) :], test.y)
        return Device(i, mix, train, test)

    def pooled(self, devices: list[Device] | None = None) -> tuple[Split, Split]:
        """All devices' (train, test) data concatenated in device order: the centralized view.

        Pass ``devices`` (every device, in order) when they are already built, to not build them twice.
        """
        devices = devices if devices is not None else [self.device(i) for i in range(self.num_devices)]
        return _concat([d.train for d in devices]), _concat([d.test for d in devices])


def _concat(splits: list[Split]) -> Split:
    """The splits' samples and labels concatenated in order."""
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


def _cap(split: Split, limit: int, rng: np.random.Generator) -> Split:
    if limit <= 0 or limit >= len(split):
        return split
    return split.subset(np.sort(rng.choice(len(split), limit, replace=False)))


def _source_and_target(spec: DataSpec, seed: int) -> tuple[Split, Split, Split | None, np.ndarray | None]:
    """(source, target_train, target_test or None, groups for natural partition or None)."""
    root = Path(spec.data_dir)
    if spec.dataset == "digits":
        digits = load_embedded_digits()
        src_idx, tgt_idx = part.split_train_test(np.arange(len(digits)), 0.5, numpy_rng(seed, "digits"))
        return digits.subset(src_idx), digits.subset(tgt_idx), None, None
    if spec.dataset in ("mnist_usps", "usps_mnist"):

        def mnist(split: str) -> Split:
            return load_mnist(root / "mnist" / "mnist.npz", split)

        def usps(split: str) -> Split:
            return load_usps(root / "usps" / "usps.npz", split, spec.usps_layout)

        load_src, load_tgt = (mnist, usps) if spec.dataset == "mnist_usps" else (usps, mnist)
        return load_src("train"), load_tgt("train"), load_tgt("test"), None
    if spec.dataset == "mnist_mnist":  # the shift is the devices' own look (data.shifts), e.g. colour + blend
        mnist_test = load_mnist(root / "mnist" / "mnist.npz", "test")
        order = numpy_rng(seed, "mnist_mnist").permutation(len(mnist_test))
        half = len(mnist_test) // 2  # MNIST's test set: half the devices' unlabeled pool, half their test split
        pool, held_out = mnist_test.subset(order[:half]), mnist_test.subset(order[half:])
        return load_mnist(root / "mnist" / "mnist.npz", "train"), pool, held_out, None
    if spec.dataset == "hapt":
        hapt = load_hapt(root / "hapt" / "hapt.npz")
        is_src = np.isin(hapt.subject, spec.hapt_source_subjects)
        if is_src.all() or not is_src.any():
            raise DataError(f"hapt_source_subjects {spec.hapt_source_subjects} leave no source or no target")
        x = standardise(hapt.x, hapt.x[torch.as_tensor(is_src)])
        src = Split(x[torch.as_tensor(is_src)], hapt.y[torch.as_tensor(is_src)])
        tgt = Split(x[torch.as_tensor(~is_src)], hapt.y[torch.as_tensor(~is_src)])
        return src, tgt, None, hapt.subject[~is_src]
    if spec.dataset == "imagefolder":
        src, classes, mode = load_image_folder(root, spec.source_domain, spec.image_size, mode=spec.image_mode)
        tgt = load_image_folder(root, spec.target_domain, spec.image_size, classes, mode)[0]
        test = None
        if spec.target_test_domain:  # a labeled target test folder, spread over the devices
            test = load_image_folder(root, spec.target_test_domain, spec.image_size, classes, mode)[0]
        return src, tgt, test, None
    if spec.dataset == "npz":
        data = load_npz(spec.path)
        if spec.partition == "dirichlet" and not data.target_labeled:
            raise DataError(f"{spec.path}: partition 'dirichlet' draws label skew from y_target; the file has none")
        return data.source, data.target, data.target_test, data.groups
    raise DataError(f"unknown dataset {spec.dataset!r}; choose one of {', '.join(DATASETS)}")


def _as_rgb(split: Split) -> Split:
    """(N, 1, H, W) grey images -> (N, 3, H, W), the grey value in every channel."""
    return Split(split.x.repeat(1, 3, 1, 1), split.y)


def default_shift_kinds(sample_shape: tuple[int, ...]) -> tuple[str, ...]:
    """Every shift of the modality: sensor shifts for windows (C, T), image shifts for (C, H, W),
    and the colour shifts as well for RGB images (all but ``blend``, a whole new background that is
    asked for by name); none for feature vectors (D,)."""
    if len(sample_shape) == 1:
        return ()
    if len(sample_shape) == 2:
        return SENSOR_SHIFTS
    colour = tuple(kind for kind in COLOUR_SHIFTS if kind != "blend")
    return IMAGE_SHIFTS + colour if sample_shape[0] == 3 else IMAGE_SHIFTS


def _check_fleet_size(spec: DataSpec, pool: int) -> None:
    """DataError, before any training, when the target pool cannot give every device its data."""
    if spec.samples_per_device > pool:
        raise DataError(f"data.samples_per_device: {spec.samples_per_device} exceeds the target pool of {pool} samples")
    if spec.samples_per_device == 0 and pool < spec.num_devices:
        raise DataError(
            f"data.num_devices: {spec.num_devices} devices need at least {spec.num_devices} target samples; "
            f"the data holds {pool}"
        )


def _check_shift_kinds(kinds: tuple[str, ...], sample_shape: tuple[int, ...]) -> None:
    """Every shift named in ``data.shift_kinds`` applies to samples of this shape (DataError otherwise)."""
    if len(sample_shape) == 3:
        fits, what = IMAGE_SHIFTS + COLOUR_SHIFTS, "images"
    elif len(sample_shape) == 2:
        fits, what = SENSOR_SHIFTS, "sensor windows"
    else:
        fits, what = (), "feature vectors"
    wrong = [k for k in kinds if k not in fits]
    if wrong:
        raise DataError(
            f"data.shift_kinds: {wrong} do not apply to {what} of shape {sample_shape}; "
            f"those take {', '.join(fits) or 'no synthetic shift'}"
        )


def input_preprocessing(spec: DataSpec) -> dict[str, Any] | None:
    """What the data pipeline does to raw samples before the model sees them, for the model's contract:
    HAPT windows are standardised per channel with the source subjects' statistics (``standardise``);
    every other dataset reaches the model as recorded (its normalisation is inside the model)."""
    if spec.dataset != "hapt":
        return None
    hapt = load_hapt(Path(spec.data_dir) / "hapt" / "hapt.npz")
    source = hapt.x[torch.as_tensor(np.isin(hapt.subject, spec.hapt_source_subjects))]  # (N, C, T)
    return {
        "kind": "standardise",
        "mean": source.mean(dim=(0, 2)).tolist(),
        "std": source.std(dim=(0, 2)).clamp_min(1e-6).tolist(),
        "applies_to": "raw windows, per channel: (x - mean) / std before the model (admp_device.infer --raw does it)",
    }


def load_domains(spec: DataSpec, seed: int) -> tuple[Split, Split, Split | None, np.ndarray | None]:
    """(labeled source, target pool, official target test set or None, natural groups or None) of
    ``spec``, before any cap or partition: what ``build_task`` cuts and ``fedadmp export-npz`` writes."""
    source, target, target_test, groups = _source_and_target(spec, seed)
    if spec.rgb:  # grey digits as 3-channel images, so that colour shifts and RGB models apply
        source, target = _as_rgb(source), _as_rgb(target)
        target_test = _as_rgb(target_test) if target_test is not None else None
    return source, target, target_test, groups


def build_task(spec: DataSpec, seed: int) -> CrossDomainTask:
    """Load the data of ``spec`` and cut the target into devices, deterministically from ``seed``."""
    source, target, target_test, groups = load_domains(spec, seed)
    rng = numpy_rng(seed, "split")
    source = _cap(source, spec.max_source, rng)
    src_train, src_val = part.split_train_test(np.arange(len(source)), spec.source_val_fraction, rng)
    if spec.partition == "subject":
        if groups is None:
            raise DataError(f"partition 'subject' needs natural groups; dataset {spec.dataset!r} has none")
        train_parts = list(part.group_partition(groups).values())
    else:
        target = _cap(target, spec.max_target, rng)
        n = spec.num_devices
        _check_fleet_size(spec, len(target))
        if spec.samples_per_device > 0 and spec.partition == "iid":
            train_parts = None  # drawn per device on demand: fleets of any size cost nothing here
        elif spec.partition == "iid":
            train_parts = part.iid_partition(len(target), n, rng)
        elif spec.partition == "dirichlet":
            train_parts = part.dirichlet_partition(target.y.numpy(), n, spec.dirichlet_alpha, rng)
        else:
            raise DataError(f"unknown partition {spec.partition!r}; choose one of {', '.join(PARTITIONS)}")
    num_devices = spec.num_devices if train_parts is None else len(train_parts)
    test_parts: list[np.ndarray] | None = None
    if train_parts is None:
        if target_test is not None:
            raise DataError(
                f"data.samples_per_device: not supported for {spec.dataset!r} (it has an official "
                "test split); use partition iid/dirichlet without it"
            )
        target_test = target
    elif target_test is None:  # held-out share of each device
        splits = [part.split_train_test(p, spec.target_test_fraction, rng) for p in train_parts]
        train_parts, test_parts = [s[0] for s in splits], [s[1] for s in splits]
        target_test = target
    else:  # an official test set: spread it IID over the devices
        test_parts = part.iid_partition(len(target_test), len(train_parts), rng)
    shifts_on = spec.shifts_enabled()
    kinds = tuple(spec.shift_kinds) or default_shift_kinds(tuple(source.x.shape[1:]))
    _check_shift_kinds(kinds if shifts_on else (), tuple(source.x.shape[1:]))
    return CrossDomainTask(
        name=spec.dataset,
        num_classes=int(source.y.max()) + 1,
        source_train=source.subset(src_train),
        source_val=source.subset(src_val),
        target_train=target,
        target_test=target_test,
        train_parts=train_parts,
        test_parts=test_parts,
        seed=seed,
        num_devices=num_devices,
        shift_kinds=kinds if shifts_on else (),
        max_shifts=spec.max_shifts_per_device,
        severity_range=(spec.severity_min, spec.severity_max),
        draw=spec.samples_per_device,
        test_fraction=spec.target_test_fraction,
    )
