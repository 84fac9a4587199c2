"""Write the "your own data" examples from the shared real data, as a user would bring theirs.

    python -m simulations.own_data_examples --data ../shared/data --out examples

- ``features.npz``: MNIST -> USPS as 784-d feature vectors (the digits flattened; USPS in MNIST's
  20x20-box layout, since an MLP has no translation invariance), USPS's official test set as
  ``x_target_test``/``y_target_test`` (``simulations/scenarios/own_features.yaml``);
- ``sensor9.npz``: HAPT as 9 channels x 64 steps (the 6 raw axes, the magnitudes of acceleration and
  rotation and of the change in acceleration, at half the rate), subjects 1-20 the source, the others
  the devices with ``group_target`` = subject (``own_sensor.yaml``);
- ``images/``: MNIST -> USPS as grey PNG folders ``studio`` (2,000 MNIST), ``field`` (2,000 USPS
  train, the devices') and ``field_test`` (USPS test, labeled) (``own_images.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from admp_data.npz import write_npz
from admp_data.sources import Split, load_hapt, load_mnist, load_usps


def _subset(split: Split, n: int, seed: int) -> Split:
    """n samples of ``split``, drawn without replacement."""
    idx = np.sort(np.random.default_rng(seed).choice(len(split), min(n, len(split)), replace=False))
    return split.subset(idx)


def _flat(split: Split) -> Split:
    """(N, 1, 28, 28) images as (N, 784) feature vectors."""
    return Split(split.x.flatten(1), split.y)


def features(data: Path, out: Path) -> Path:
    """MNIST -> USPS digits as flattened 784-d vectors."""
    source = _flat(_subset(load_mnist(data / "mnist" / "mnist.npz"), 10000, 0))
    usps = data / "usps" / "usps.npz"
    target, test = load_usps(usps, layout="box"), load_usps(usps, "test", layout="box")
    return write_npz(out / "features.npz", source, _flat(target), _flat(test))


def sensor9(data: Path, out: Path) -> Path:
    """HAPT windows as 9 channels x 64 steps (raw axes plus three magnitudes, half the rate)."""
    hapt = load_hapt(data / "hapt" / "hapt.npz")  # x (N, 6, 128): acc xyz, gyro xyz
    acc, gyro = hapt.x[:, :3], hapt.x[:, 3:]
    jerk = torch.diff(acc, dim=2, prepend=acc[:, :, :1])
    extra = torch.stack([acc.norm(dim=1), gyro.norm(dim=1), jerk.norm(dim=1)], dim=1)  # (N, 3, 128)
    x = torch.cat([hapt.x, extra], dim=1)
    x = x.view(len(x), 9, 64, 2).mean(dim=3)  # (N, 9, 64)
    is_src = hapt.subject <= 20
    src, tgt = torch.as_tensor(is_src), torch.as_tensor(~is_src)
    return write_npz(
        out / "sensor9.npz", Split(x[src], hapt.y[src]), Split(x[tgt], hapt.y[tgt]), groups=hapt.subject[~is_src]
    )


def images(data: Path, out: Path) -> Path:
    """MNIST -> USPS as grey PNG class folders: studio (source), field (devices), field_test (labeled)."""
    from PIL import Image

    usps = data / "usps" / "usps.npz"
    domains = {
        "studio": _subset(load_mnist(data / "mnist" / "mnist.npz"), 2000, 1),
        "field": _subset(load_usps(usps), 2000, 2),
        "field_test": load_usps(usps, "test"),
    }
    for domain, split in domains.items():
        for i, (x, y) in enumerate(zip(split.x, split.y, strict=True)):
            folder = out / "images" / domain / f"digit_{int(y)}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((x[0].numpy() * 255).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    return out / "images"


def main(argv: list[str] | None = None) -> int:
    """Write the three examples; prints what it wrote."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder with mnist/, usps/, hapt/")
    parser.add_argument("--out", default="examples", help="where to write the examples")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    for make in (features, sensor9, images):
        print(f"{make.__name__}: {make(data, out)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
