"""A user's image folders (``data.dataset: imagefolder``): ``data_dir/<domain>/<class>/<image>``.

The source domain fixes the classes (its sorted class folder names) and, with ``image_mode: auto``,
the colour mode: grey when every source image is single-channel, RGB otherwise; the target domain
and an optional labeled target-test domain (``target_test_domain``) are read with both. Images are
resized to ``image_size`` and scaled to [0, 1]; normalisation (source statistics, inside the model)
and augmentation (the source recipe) are the ones every dataset gets. A file that is no image, an
image outside a class folder or a target class the source lacks is one ``DataError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from admp_data.sources import DataError, Split

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IGNORED = {"thumbs.db", "desktop.ini"}  # files an OS drops into folders
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image file, label) of every class folder, in order; DataError for mis-laid or foreign files."""
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not _ignored(entry):
            raise DataError(f"{entry}: lies directly in the domain folder; images go in {folder}/<class>/")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    foreign = [name for name in found if name not in classes]
    if foreign:
        raise DataError(f"{folder}: class folders {foreign} are not source classes ({', '.join(classes)})")
    files = []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()) if (folder / name).is_dir() else []:
            if _ignored(file) or file.is_dir():
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{file}: not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.append((file, label))
    if not files:
        raise DataError(f"{folder}: no images found in class folders {classes}")
    return files


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in IGNORED


def load_image_folder(
    root: Path, domain: str, size: int = 32, classes: list[str] | None = None, mode: str = "auto"
) -> tuple[Split, list[str], str]:
    """``root/domain/class/image`` -> (N, C, size, size) in [0, 1], C = 1 (grey) or 3 (rgb).

    ``classes`` fixes the label order (pass the source's so that target labels line up); by default
    the sorted class folder names of this domain. ``mode``: grey | rgb | auto (as the images are).
    Returns the split, the classes and the colour mode used.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(root) / domain
    if not folder.is_dir():
        raise DataError(f"{folder}: domain folder not found")
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class folders")
    files = _files(folder, classes)
    images, labels, all_grey = [], [], True
    for file, label in files:  # each file opened once; auto reads as RGB and notes whether it was grey
        try:
            with Image.open(file) as img:
                all_grey = all_grey and img.mode in GREY_MODES
                pixels = img.convert("L" if mode == "grey" else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{file}: not a readable image ({exc})") from exc
        array = np.asarray(pixels, dtype=np.float32) / 255.0  # (size, size) or (size, size, 3)
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        labels.append(label)
    x = torch.as_tensor(np.stack(images))  # (N, C, size, size)
    if mode == "auto":  # grey images read as RGB hold the grey value in every channel: keep one
        mode = "grey" if all_grey else "rgb"
        x = x[:, :1] if all_grey else x
    return Split(x.contiguous(), torch.as_tensor(labels, dtype=torch.long)), classes, mode
