"""``adx eval --report DIR``: pictures of an evaluation, for people who would rather look than read.

- ``roc.png``: image-level ROC (and pixel-level, when masks exist), AUROC in the legend;
- ``pro.png``: the PRO curve with the FPR = 0.3 integration limit shaded;
- ``scores.png``: histogram of normal vs anomalous image scores with the threshold marked;
- ``false_negatives.png`` / ``false_positives.png``: the worst misses and false alarms at the
  threshold (only images it got wrong; none, no picture), each row image | ground truth | heatmap
  overlay;
- ``index.html``: one page with all of it and the numbers.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from adx_runtime.errors import DependencyError
from adx_runtime.evaluate import Evaluation, ImageRecord
from adx_runtime.images import decode_image
from adx_runtime.metrics import MetricUndefined, pro_curve
from adx_runtime.overlay import overlay
from adx_runtime.predictor import Predictor
from adx_runtime.preprocess import geometric

GALLERY_ROWS = 6


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyError(f"reports need matplotlib: pip install 'adexport[eval]' ({exc})") from None
    return plt


def _roc(plt: Any, ev: Evaluation, path: Path) -> None:
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    ok = ev.scored
    labels = np.array([r.label for r in ok])
    scores = np.array([r.score for r in ok])
    fig, ax = plt.subplots(figsize=(5, 5))
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"image (AUROC {ev.metrics['image_auroc']:.3f})", lw=2)
    if ev.masks is not None and ev.maps is not None and ev.metrics.get("pixel_auroc") is not None:
        fpr, tpr, _ = roc_curve(ev.masks.ravel(), ev.maps.ravel())
        ax.plot(fpr, tpr, label=f"pixel (AUROC {ev.metrics['pixel_auroc']:.3f})", lw=2)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC: {ev.method} on {ev.category}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pro(plt: Any, ev: Evaluation, path: Path) -> bool:
    if ev.masks is None or ev.maps is None:
        return False
    try:
        fprs, pros = pro_curve(ev.masks, ev.maps)
    except MetricUndefined:
        return False
    grid = np.linspace(0, 1, 1001)  # the exact curve has one point per distinct pixel score
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(grid, np.interp(grid, fprs, pros), lw=2, label=f"PRO (AUPRO@0.3 {ev.metrics.get('aupro', 0):.3f})")
    ax.axvspan(0, 0.3, color="tab:blue", alpha=0.08, label="integrated: FPR <= 0.3")
    ax.set(xlabel="false positive rate (normal pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.01),
           title=f"PRO curve: {ev.method} on {ev.category}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _histogram(plt: Any, ev: Evaluation, path: Path) -> None:
    ok = ev.scored
    good = [r.score for r in ok if r.label == 0]
    bad = [r.score for r in ok if r.label == 1]
    allv = np.array(good + bad + [ev.threshold])
    bins = np.linspace(allv.min(), allv.max(), 30)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(good, bins=bins, alpha=0.6, label=f"normal (n={len(good)})", color="tab:green")
    ax.hist(bad, bins=bins, alpha=0.6, label=f"anomalous (n={len(bad)})", color="tab:red")
    ax.axvline(ev.threshold, c="k", ls="--", label=f"threshold {ev.threshold:.4g}")
    ax.set(xlabel="raw image score", ylabel="images", title=f"Image scores: {ev.method} on {ev.category}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worst_cases(ev: Evaluation, n: int = GALLERY_ROWS) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(false negatives, false positives) at the evaluation's threshold: the missed anomalous images
    scored lowest and the flagged good images scored highest. Only real errors: a good image that
    passed is no false positive however high it scored, so either list may be empty."""
    ok = ev.scored
    fn = sorted((r for r in ok if r.label == 1 and r.score < ev.threshold), key=lambda r: r.score)[:n]
    fp = sorted((r for r in ok if r.label == 0 and r.score >= ev.threshold), key=lambda r: -r.score)[:n]
    return fn, fp


def _gallery(plt: Any, ev: Evaluation, rows: list[ImageRecord], predictor: Predictor, title: str, path: Path) -> None:
    if not rows:
        return
    index = {r.path: i for i, r in enumerate(ev.scored)}
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for ax_row, rec in zip(axes, rows):
        i = index[rec.path]
        img = decode_image(rec.path)
        raw = ev.maps[i] if ev.maps is not None else None
        ax_row[0].imshow(geometric(img, predictor.preprocess))
        verdict = "flagged" if rec.predicted else "passed"
        ax_row[0].set_title(f"{rec.defect}/{Path(rec.path).name}\nscore {rec.score:.4g} ({verdict})", fontsize=8)
        if ev.masks is not None:
            ax_row[1].imshow(ev.masks[i], cmap="gray", vmin=0, vmax=1)
            ax_row[1].set_title("ground truth", fontsize=8)
        else:
            ax_row[1].text(0.5, 0.5, "no mask", ha="center", va="center")
        if raw is not None:
            ax_row[2].imshow(overlay(img, predictor.normalized_maps(raw), predictor.preprocess))
            ax_row[2].set_title("heatmap (white: pixel threshold)", fontsize=8)
        else:
            ax_row[2].text(0.5, 0.5, "no map\n(image-level method)", ha="center", va="center")
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title} (threshold {ev.threshold:.4g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(ev: Evaluation, out: str | Path, predictor: Predictor) -> list[Path]:
    """Write the report's files into ``out``; returns them."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    _roc(plt, ev, out / "roc.png")
    written.append(out / "roc.png")
    if _pro(plt, ev, out / "pro.png"):
        written.append(out / "pro.png")
    _histogram(plt, ev, out / "scores.png")
    written.append(out / "scores.png")
    fn, fp = worst_cases(ev)
    for rows, name, title in ((fn, "false_negatives.png", "Worst false negatives: missed anomalous images, lowest first"),
                              (fp, "false_positives.png", "Worst false positives: flagged normal images, highest first")):
        if rows:
            _gallery(plt, ev, rows, predictor, title, out / name)
            written.append(out / name)
    (out / "index.html").write_text(_html(ev, [p.name for p in written], fn, fp), encoding="utf-8")
    written.append(out / "index.html")
    return written


def _html(ev: Evaluation, pictures: list[str], fn: list[ImageRecord], fp: list[ImageRecord]) -> str:
    esc = html.escape
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else esc(str(v))  # noqa: E731
    metric_rows = "".join(f"<tr><td>{esc(k)}</td><td>{fmt(v)}</td></tr>" for k, v in ev.metrics.items()
                          if not isinstance(v, dict))
    kinds = "".join(
        f"<tr><td>{esc(k)}</td><td>{e['n']}</td><td>{e['mean_score']:.4g}</td><td>{e['flagged_rate']:.1%}</td>"
        f"<td>{fmt(e.get('image_auroc'))}</td><td>{fmt(e.get('pixel_auroc'))}</td><td>{fmt(e.get('aupro'))}</td></tr>"
        for k, e in ev.per_kind.items())

    def cases(rows: list[ImageRecord], none: str) -> str:
        if not rows:  # say so rather than show an empty list
            return f"<p>none: {esc(none)} at the threshold {ev.threshold:.4g}</p>"
        items = "".join(f"<li>{esc(r.defect)}/{esc(Path(r.path).name)}: {r.score:.4g}</li>" for r in rows)
        return f"<ol>{items}</ol>"

    notes = "".join(f"<li>{esc(n)}</li>" for n in ev.notes)
    warnings = "".join(f"<li>{esc(w)}</li>" for w in ev.warnings)
    warnings = f'<h2>Warnings</h2><ul style="color:#a00">{warnings}</ul>' if warnings else ""
    imgs = "".join(f'<figure><img src="{esc(p)}" style="max-width:100%"><figcaption>{esc(p)}</figcaption></figure>'
                   for p in pictures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>adx eval: {esc(ev.category)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 8px;text-align:right}}</style>
</head><body><h1>{esc(ev.method)} on {esc(ev.category)}</h1>
<p>bundle {esc(ev.bundle)} (manifest sha256 {ev.manifest_sha256[:16]}...), dataset {esc(ev.dataset)},
image threshold {ev.threshold:.4g}</p>
{warnings}<table><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Per defect type</h2><table><tr><th>kind</th><th>n</th><th>mean score</th><th>flagged</th>
<th>image AUROC</th><th>pixel AUROC</th><th>AUPRO</th></tr>{kinds}</table>
<h2>Worst false negatives</h2>{cases(fn, "every anomalous image was flagged")}
<h2>Worst false positives</h2>{cases(fp, "no good image was flagged")}
<ul>{notes}</ul>{imgs}</body></html>
"""
