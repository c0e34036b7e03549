"""PRNet's training data: synthetic anomalies (``adx_synth.anomalies``) on every epoch's images,
and optionally a few real anomalies with masks read from a folder in the MVTec AD layout."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adexport.training import Augment
from adx_runtime.datasets import GOOD, Sample, list_images, mask_for
from adx_runtime.errors import ConfigError, ImageDecodeError
from adx_runtime.images import decode_image
from adx_runtime.preprocess import PreprocessConfig, geometric, geometric_array
from adx_runtime.progress import SILENT, Progress


@dataclass
class RealAnomalies:
    """A few real anomalous images at the model geometry with their masks."""

    images: np.ndarray  # (M, H, W, C) uint8
    masks: np.ndarray  # (M, 1, H, W) float32, 0 or 1
    per_defect: dict[str, int]  # images taken per defect type

    def __len__(self) -> int:
        return len(self.images)


def _category_folder(folder: Path, category: str | None) -> Path:
    if (folder / "test").is_dir():
        return folder
    if category and (folder / category / "test").is_dir():
        return folder / category
    raise ConfigError(f"anomalies folder {str(folder)!r} is not in the MVTec AD layout: expected test/<defect>/*.png "
                      f"and ground_truth/<defect>/<name>_mask.png in it"
                      + (f" (or in {category}/ inside it)" if category else ""))


def _mask_file(gt_dir: Path, image: Path) -> Path | None:
    # The naming rule of adx_runtime.datasets (MVTec's <name>_mask.png, or the image's own name).
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"):
        if (gt_dir / name).is_file():
            return gt_dir / name
    return None


def load_real_anomalies(folder: str | Path, category: str | None, preprocess: PreprocessConfig,
                        n_per_defect: int = 10, progress: Progress = SILENT) -> RealAnomalies:
    """The first ``n_per_defect`` images (by name) of every ``test/<defect>/`` that have a mask.

    ``folder`` is a category folder in the MVTec AD layout, or a dataset root holding ``category``
    (``adx_runtime.datasets.load_split`` is not used: it insists on ``train/good``, which a folder
    of a few real anomalies need not have). Images go through the runtime's geometry; masks are
    resized with nearest neighbour and thresholded at 128. Use anomalies that are not in the test
    set you evaluate on.
    """
    root = _category_folder(Path(folder), category)
    nearest = dataclasses.replace(preprocess, interpolation="nearest")
    images, masks, per_defect = [], [], {}
    defects = sorted(p for p in (root / "test").iterdir()
                     if p.is_dir() and p.name != GOOD and not p.name.startswith("."))
    for d in defects:
        taken = 0
        for img in list_images(d):
            if taken >= n_per_defect:
                break
            mask_path = mask_for(root / "ground_truth" / d.name, img)
            if mask_path is None:
                continue
            try:
                arr = geometric_array(decode_image(img), preprocess)
                mask = np.asarray(geometric(decode_image(mask_path).convert("L"), nearest)) >= 128
            except ImageDecodeError as exc:
                progress.note(f"skipped real anomaly {exc.path}: {exc.reason}")
                continue
            images.append(arr)
            masks.append(mask[None].astype(np.float32))
            taken += 1
        if taken:
            per_defect[d.name] = taken
    if not images:
        raise ConfigError(f"anomalies folder {str(root)!r} holds no anomalous image with a mask "
                          "(test/<defect>/<name>.png with ground_truth/<defect>/<name>_mask.png)")
    return RealAnomalies(np.stack(images), np.stack(masks), per_defect)


def training_category(samples: Sequence[Sample]) -> str | None:
    """The dataset category of the training images (``DATASET/CATEGORY/train/good/x.png``), or
    ``None`` when the paths do not have that shape."""
    parents = Path(samples[0].path).parents
    if len(parents) >= 3 and parents[0].name == GOOD and parents[1].name == "train":
        return parents[2].name
    return None


def texture_source(textures: str | None, category: str | None) -> Any:
    """``adx_synth.anomalies.TextureSource``: generated textures (not of ``category``, so a texture
    category is never pasted onto itself), or the images of the folder ``textures`` (e.g. DTD)."""
    from adx_synth.anomalies import TextureSource  # noqa: PLC0415

    if textures is None:
        return TextureSource.generated(exclude=[category] if category else [])
    return TextureSource.from_folder(textures)  # a ConfigError naming the folder when it has no images


def make_augment(textures: Any, image_size: int, *, p_anomaly: float, real: RealAnomalies | None = None,
                 p_real: float = 0.0) -> Augment:
    """``augment(raw (B, H, W, C) uint8, rng) -> {"image", "mask" (B, 1, H, W) float32}``: synthetic
    anomalies (``adx_synth.anomalies.anomaly_batch``), then each image replaced by a random real
    anomaly with probability ``p_real``. Every draw comes from ``rng``."""
    from adx_synth.anomalies import anomaly_batch, scar_sizes  # noqa: PLC0415

    scar_width, scar_height = scar_sizes(image_size)

    def augment(raw: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = anomaly_batch(raw, rng, textures=textures, p_anomaly=p_anomaly, scar_width=scar_width,
                            scar_height=scar_height)
        images, masks = np.array(out["image"], dtype=np.uint8), np.array(out["mask"], dtype=np.float32)
        if real is not None and len(real):
            swap = rng.random(len(images)) < p_real
            picks = rng.integers(len(real), size=len(images))
            images[swap] = real.images[picks[swap]]
            masks[swap] = real.masks[picks[swap]]
        return {"image": images, "mask": masks}

    return augment
