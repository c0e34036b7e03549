"""Foreign textures (generated, or a folder such as DTD's) and the texture anomaly DRAEM and PRNet
train on: a texture blended in through a Perlin mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from adx_runtime.errors import AdxError, ConfigError
from adx_runtime.images import IMAGE_SUFFIXES, decode_image
from adx_synth.anomalies.arrays import Array, Synthetic, check_image, check_range, from_pil, to_uint8
from adx_synth.anomalies.perlin import perlin_mask
from adx_synth.textures import RENDERERS

_PIL_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "MPO"}


class TextureSource:
    """Foreign textures for texture anomalies (DRAEM and PRNet use the Describable Textures Dataset).

    Build one with :meth:`generated` (the demo generator's texture renderers, no files needed) or
    :meth:`from_folder` (any folder of images, such as DTD's ``images/``). Picklable, so it can go
    into data-loader workers.
    """

    def __init__(self, *, names: Sequence[str], paths: Sequence[Path] = (), root: Path | None = None,
                 skipped: int = 0) -> None:
        self._names = tuple(names)  # renderer names, or file paths relative to root
        self._paths = list(paths)  # empty for generated textures
        self._root = root
        #: Files found undecodable: at construction (not an image) and when first sampled (corrupt data).
        self.skipped = skipped

    @classmethod
    def generated(cls, exclude: Sequence[str] = ()) -> TextureSource:
        """The demo generator's texture renderers (``adx_synth.textures.RENDERERS``) minus ``exclude``.

        Pass the training category in ``exclude`` so that its own texture is not an anomaly. Each
        sample is rendered on demand at the requested size.
        """
        if isinstance(exclude, str):
            exclude = (exclude,)
        names = [n for n in RENDERERS if n not in set(exclude)]
        if not names:
            raise ConfigError(
                f"no generated textures left after excluding {', '.join(exclude)}; the generated "
                f"textures are {', '.join(RENDERERS)}: exclude fewer, or use a folder of textures"
            )
        return cls(names=names)

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextureSource:
        """Every image file under ``folder`` (recursively; hidden files skipped), decoded when sampled.

        Files are checked at construction by reading their header (cheap, for folders of thousands
        of images) and decoded with ``adx_runtime.images.decode_image`` on use; files that are not
        images, or whose data turns out corrupt, are skipped and counted in :attr:`skipped`.

        Raises:
            ConfigError: the folder does not exist, or holds no decodable image.
        """
        root = Path(folder)
        looked_for = ", ".join(IMAGE_SUFFIXES)
        if not root.is_dir():
            raise ConfigError(f"texture folder {str(root)!r} does not exist or is not a folder; "
                              f"expected a folder of images ({looked_for}), such as DTD's images/")
        candidates = sorted(
            p for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        paths, skipped = [], 0
        for p in candidates:
            try:
                with Image.open(p) as im:
                    ok = im.format in _PIL_FORMATS
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
                ok = False
            if ok:
                paths.append(p)
            else:
                skipped += 1
        if not paths:
            found = f"{len(candidates)} image files, none decodable" if candidates else "no image files"
            raise ConfigError(f"texture folder {str(root)!r} holds {found} (looked for {looked_for}, "
                              "recursively); give a folder of texture images such as DTD's images/ "
                              "(adx train: --set textures=DIR; adx synth-preview: --textures DIR)")
        return cls(names=[str(p.relative_to(root)) for p in paths], paths=paths, root=root, skipped=skipped)

    @property
    def names(self) -> tuple[str, ...]:
        """Renderer names (generated) or file paths relative to the folder."""
        return self._names

    @property
    def description(self) -> str:
        """One line for messages, e.g. ``generated textures: grid, wood, tile``."""
        if self._root is None:
            return f"generated textures: {', '.join(self._names)}"
        skipped = f" ({self.skipped} undecodable skipped)" if self.skipped else ""
        return f"folder {self._root}: {len(self._paths)} images{skipped}"

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"TextureSource({self.description})"

    def sample(self, rng: np.random.Generator, shape: tuple[int, int], channels: int) -> Array:
        """A random texture ``(H, W, channels)`` uint8 (``channels`` 1: converted to gray, 3: RGB).

        Generated textures are rendered at ``max(H, W)`` and randomly cropped; folder images get a
        random crop of the target's aspect ratio covering 50 % to 100 % of the largest one that
        fits, resized bilinearly.
        """
        h, w = int(shape[0]), int(shape[1])
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if self._root is None:
            name = self._names[int(rng.integers(len(self._names)))]
            n = max(h, w)
            img, _ = RENDERERS[name](rng, n)
            arr = to_uint8(img * 255.0)
            y0, x0 = int(rng.integers(0, n - h + 1)), int(rng.integers(0, n - w + 1))
            pil = Image.fromarray(arr[y0:y0 + h, x0:x0 + w], "RGB")
            return from_pil(pil, channels)
        return from_pil(self._sample_file(rng, h, w), channels)

    def _sample_file(self, rng: np.random.Generator, h: int, w: int) -> Image.Image:
        while self._paths:
            i = int(rng.integers(len(self._paths)))
            try:
                img = decode_image(self._paths[i])
            except AdxError:
                # Corrupt data behind a valid header: drop it and draw again.
                del self._paths[i]
                self._names = self._names[:i] + self._names[i + 1:]
                self.skipped += 1
                continue
            sw, sh = img.size
            crop_w = min(sw, sh * w / h)  # the largest crop with the target's aspect ratio
            crop_w *= float(rng.uniform(0.5, 1.0)) ** 0.5  # 50 % to 100 % of its area
            crop_h = crop_w * h / w
            x0 = float(rng.uniform(0.0, sw - crop_w))
            y0 = float(rng.uniform(0.0, sh - crop_h))
            return img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        raise ConfigError(f"texture folder {str(self._root)!r}: none of its images could be decoded "
                          f"({self.skipped} skipped)")


def texture_anomaly(
    image: Array,
    rng: np.random.Generator,
    textures: TextureSource,
    *,
    opacity: tuple[float, float] = (0.0, 0.8),
    threshold: float = 0.5,
) -> Synthetic:
    """A foreign texture blended in through a Perlin mask (DRAEM, Zavrtanik et al., ICCV 2021, eq. 1).

    ``out = image * (1 - M) + M * ((1 - beta) * texture + beta * image)`` with ``M`` the
    :func:`perlin_mask` (threshold 0.5) and ``beta`` uniform in ``opacity`` (DRAEM: 0 to 0.8, so the
    texture always dominates a little at least). Rounded to uint8 inside the mask; outside it the
    image is copied. DRAEM also applies random augmentations to the texture first; a folder source
    only crops and resizes it. ``mask`` is the Perlin mask.
    """
    image = check_image(image)
    check_range("texture_anomaly opacity", *opacity, minimum=0.0)
    if opacity[1] > 1.0:
        raise ConfigError(f"texture_anomaly opacity must lie in [0, 1], got {opacity}")
    h, w, c = image.shape
    mask = perlin_mask((h, w), rng, threshold=threshold)
    texture = textures.sample(rng, (h, w), c)
    beta = np.float32(rng.uniform(opacity[0], opacity[1]))
    out = image.copy()
    out[mask] = to_uint8((1 - beta) * texture[mask].astype(np.float32) + beta * image[mask].astype(np.float32))
    return Synthetic(out, mask)
