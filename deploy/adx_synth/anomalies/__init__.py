"""Anomaly synthesis for self-supervised training: CutPaste, CutPaste-scar, Perlin texture anomalies.

Methods that learn from normal images only make their own anomalies:

- **CutPaste** (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection
  and Localization", CVPR 2021) trains a classifier to tell normal images from the same images with
  a rectangle cut out, colour-jittered and pasted elsewhere (:func:`cutpaste`: area 2 % to 15 % of
  the image, aspect ratio 0.3 to 3.3 drawn log-uniformly, ColorJitter 0.1), or with a thin rotated
  "scar" (:func:`scar`: 2 to 16 px wide, 10 to 25 px high on 256 px images, rotated -45 to 45
  degrees). :data:`VARIANTS` names the paper's 2-way ("normal", "scar") and 3-way classifiers and
  :func:`cutpaste_batch` builds one training batch of them.
- **DRAEM** (Zavrtanik, Kristan, Skocaj, "DRAEM - A discriminatively trained reconstruction embedding
  for surface anomaly detection", ICCV 2021) pastes a foreign texture (from DTD) through a thresholded
  Perlin-noise mask (:func:`perlin_noise`, :func:`perlin_mask`, :func:`texture_anomaly`); **PRNet**
  (Zhang et al., "Prototypical Residual Networks for Anomaly Detection and Localization", CVPR 2023)
  trains its segmentation head on the same kind of "unseen appearance" anomalies plus CutPaste-like
  patches: :func:`anomaly_batch` returns images and float masks for that.

Images are ``(H, W, C)`` uint8 with ``C`` 1 or 3, masks ``(H, W)`` bool; every draw comes from the
``rng`` argument, so the same seed gives byte-identical output. The mask is *the region that was
replaced*: every pixel outside it is byte-identical to the input, and inside it almost every pixel
changed, but a jittered patch can equal the original at a few pixels by chance, so the mask is not a
per-pixel difference.

:func:`write_preview` (``adx synth-preview``) draws grids of synthetic anomalies of a dataset.

One module per concern: :mod:`.arrays` (the image contract), :mod:`.jitter` (ColorJitter),
:mod:`.cutpaste`, :mod:`.perlin`, :mod:`.texture_anomaly`, :mod:`.segmentation` (PRNet's batch) and
:mod:`.preview`; import from here, which names every public one.

Imports only numpy, Pillow, the standard library and ``adx_runtime``'s torch-free modules.
"""

from adx_synth.anomalies.arrays import Synthetic
from adx_synth.anomalies.cutpaste import VARIANTS, cutpaste, cutpaste_batch, scar, scar_sizes
from adx_synth.anomalies.jitter import color_jitter
from adx_synth.anomalies.perlin import perlin_mask, perlin_noise
from adx_synth.anomalies.preview import preview_grid, write_preview
from adx_synth.anomalies.segmentation import ANOMALY_KINDS, anomaly_batch
from adx_synth.anomalies.texture_anomaly import TextureSource, texture_anomaly

__all__ = [
    "ANOMALY_KINDS",
    "VARIANTS",
    "Synthetic",
    "TextureSource",
    "anomaly_batch",
    "color_jitter",
    "cutpaste",
    "cutpaste_batch",
    "perlin_mask",
    "perlin_noise",
    "preview_grid",
    "scar",
    "scar_sizes",
    "texture_anomaly",
    "write_preview",
]
