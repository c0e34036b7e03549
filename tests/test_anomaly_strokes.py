"""Tests for adx_synth.anomalies.strokes: thin curved strokes and speck clusters (paint, not moved texture)."""

from __future__ import annotations

import numpy as np
import pytest

from adx_runtime.errors import ConfigError
from adx_synth.anomalies.strokes import MASK_COVERAGE, specks, stroke
from adx_synth.textures import RENDERERS


def _texture(name: str = "wood", n: int = 96, seed: int = 0) -> np.ndarray:
    img, _ = RENDERERS[name](np.random.default_rng(seed), n)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


IMG = _texture()


@pytest.mark.parametrize("draw", [stroke, specks])
def test_only_the_mask_changes_and_it_is_never_empty(draw) -> None:  # noqa: ANN001
    sizes = []
    for seed in range(120):
        syn = draw(IMG, np.random.default_rng(seed))
        assert syn.image.shape == IMG.shape and syn.image.dtype == np.uint8 and syn.mask.shape == IMG.shape[:2]
        assert syn.mask.any()
        assert np.array_equal(syn.image[~syn.mask], IMG[~syn.mask])
        # coverage >= MASK_COVERAGE and strength >= 0.3: nearly every masked pixel visibly changed
        diff = np.abs(syn.image.astype(int) - IMG.astype(int)).max(axis=-1)
        assert (diff[syn.mask] >= 3).mean() > 0.8
        sizes.append(int(syn.mask.sum()))
    assert min(sizes) < max(sizes) / 4  # sizes really vary
    assert 0 < MASK_COVERAGE < 1


def test_stroke_is_thin_and_its_size_follows_the_options() -> None:
    side = IMG.shape[0]
    for seed in range(40):
        syn = stroke(IMG, np.random.default_rng(seed), width=(0.02, 0.02), length=(0.4, 0.4), bend=0.0)
        ys, xs = np.nonzero(syn.mask)
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert extent <= 0.4 * side + 0.02 * side + 3  # never longer than length plus the width
        # thin: a straight stroke of width 0.02 * side covers at most about length * width pixels
        assert syn.mask.sum() <= 0.4 * side * (0.02 * side + 2)


def test_specks_count_and_radius() -> None:
    syn = specks(IMG, np.random.default_rng(3), count=(1, 1), radius=(0.05, 0.05), spread=0.0)
    r = 0.05 * IMG.shape[0]
    # one disc of radius r: about pi r^2 pixels (anti-aliased edge, coverage threshold)
    assert 0.6 * np.pi * r * r <= syn.mask.sum() <= 1.4 * np.pi * (r + 0.5) ** 2


def test_seeded_grayscale_and_bad_ranges() -> None:
    for draw in (stroke, specks):
        a, b = draw(IMG, np.random.default_rng(7)), draw(IMG, np.random.default_rng(7))
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        gray = IMG[..., :1].copy()
        g = draw(gray, np.random.default_rng(1))
        assert g.image.shape == gray.shape and np.array_equal(g.image[~g.mask], gray[~g.mask])
    with pytest.raises(ConfigError, match="stroke width"):
        stroke(IMG, np.random.default_rng(0), width=(0.05, 0.01))
    with pytest.raises(ConfigError, match="specks count"):
        specks(IMG, np.random.default_rng(0), count=(0, 2))


def test_strokes_import_neither_torch_nor_the_evaluation_defects() -> None:
    import ast
    from pathlib import Path

    import adx_synth.anomalies.strokes as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.startswith(("torch", "adexport")) or "field_defects" in n for n in names), names
