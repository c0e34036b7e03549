"""adx_synth: procedural anomaly-detection datasets in the MVTec AD layout, and defect primitives.

Real datasets cannot be downloaded everywhere (CI, air-gapped boxes), so the demo and the tests use
these generators: texture categories with defects and exact masks (:func:`generate_demo_dataset`),
and handwritten-like digits for one-class experiments (:func:`generate_digits`). The defect
primitives (alpha shapes, strokes, warps, fills) work on any image, and :mod:`adx_synth.anomalies`
synthesises training anomalies (CutPaste, CutPaste-scar, Perlin texture anomalies) on real images.
:mod:`adx_synth.field_defects` draws evaluation defects (scratches, cracks, pits, stains, burns)
that share no code with that synthesis: :func:`apply_random_defect`, and the demo's ``field``
test-defect family.

Imports only numpy, Pillow and the standard library (scikit-learn on request). Nothing happens at
import time.
"""

from adx_synth.anomalies import (
    ANOMALY_KINDS,
    VARIANTS,
    Synthetic,
    TextureSource,
    anomaly_batch,
    color_jitter,
    cutpaste,
    cutpaste_batch,
    perlin_mask,
    perlin_noise,
    preview_grid,
    scar,
    texture_anomaly,
    write_preview,
)
from adx_synth.defects import (
    alpha_centroid,
    bilinear_sample,
    blob_alpha,
    bump_warp,
    loguniform,
    paint,
    random_centre,
    random_walk,
    stroke_alpha,
    textured_fill,
    tint,
)
from adx_synth.digits import generate_digits, render_digit, write_sklearn_digits
from adx_synth.field_defects import (
    FIELD_DEFECT_KINDS,
    FIELD_DEFECT_SCALES,
    FieldDefect,
    apply_random_defect,
    render_field_defect,
)
from adx_synth.writer import (
    DEFECT_SCALES,
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    EXTRA_CATEGORIES,
    TEST_DEFECT_FAMILIES,
    count_demo_images,
    generate_demo_dataset,
)

__all__ = [
    "ANOMALY_KINDS",
    "DEFECT_SCALES",
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "EXTRA_CATEGORIES",
    "FIELD_DEFECT_KINDS",
    "FIELD_DEFECT_SCALES",
    "FieldDefect",
    "Synthetic",
    "TEST_DEFECT_FAMILIES",
    "TextureSource",
    "VARIANTS",
    "alpha_centroid",
    "anomaly_batch",
    "apply_random_defect",
    "bilinear_sample",
    "blob_alpha",
    "bump_warp",
    "color_jitter",
    "count_demo_images",
    "cutpaste",
    "cutpaste_batch",
    "generate_demo_dataset",
    "generate_digits",
    "loguniform",
    "paint",
    "perlin_mask",
    "perlin_noise",
    "preview_grid",
    "random_centre",
    "random_walk",
    "render_digit",
    "render_field_defect",
    "scar",
    "stroke_alpha",
    "texture_anomaly",
    "textured_fill",
    "tint",
    "write_preview",
    "write_sklearn_digits",
]
