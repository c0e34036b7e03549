"""What ``adx select`` prints and writes: the ranked table, and a self-contained HTML page with the
table and an accuracy-vs-latency scatter drawn as inline SVG (no script, nothing fetched)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adexport.select.rank import METRIC_LABELS, format_duration, ranked, rows_of

if TYPE_CHECKING:
    from adexport.select.run import SelectResult


def _f(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def table_rows(result: "SelectResult") -> list[dict[str, Any]]:
    """One dict per candidate, in ranked order, with the table's columns."""
    by_name = {c["method"]: c for c in result.candidates}
    out = []
    for i, row in enumerate(ranked(rows_of(result.candidates, result.options.metric)), 1):
        c = by_name[row.name]
        ok = c.get("status") == "ok"
        b = c.get("bench", {}) if ok else {}
        sel = c.get("selection", {}) if ok else {}
        epochs = c.get("epochs") or {}
        out.append({
            "rank": i if row.rankable else None, "method": row.name, "status": c.get("status"),
            "accuracy": row.accuracy, "image_auroc": sel.get("image_auroc"), "aupro": sel.get("aupro"),
            "f1": sel.get("image_f1_max"), "p50_ms": b.get("p50_ms"), "p99_ms": b.get("p99_ms"),
            "images_per_s": b.get("images_per_s"), "best_batch": b.get("best_batch"), "bundle_mb": b.get("bundle_mb"),
            "peak_rss_mb": b.get("peak_rss_mb"), "fit_s": c.get("fit_seconds"),
            "epochs": f"{epochs['used']}/{epochs['default']}" if "used" in epochs else "",
            "front": row.name in result.front, "pick": row.name == result.pick.name,
            "reason": c.get("reason"),
        })
    return out


def format_select(result: "SelectResult") -> str:
    """The closing text of ``adx select``: sets, table, front, pick, report-set figures, files."""
    metric = result.options.metric
    label = METRIC_LABELS[metric]
    v = result.validation
    sel = ", ".join(f"{k} {n}" for k, n in v["select"].items())
    rep = ", ".join(f"{k} {n}" for k, n in v["report"].items()) or "none"
    lines = ["", f"selection set ({v['mode']}): {sel}; report set: {rep}", f"  {v['note']}"]
    if result.skipped:
        lines.append(f"resumed from the earlier run (not redone): {', '.join(result.skipped)}")
    head = (f"{'#':>2} {'method':<10} {label[:12]:>12} {'img AUROC':>9} {'AUPRO':>6} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'img/s':>7} {'@bs':>3} {'MB':>6} {'RSS MB':>6} {'fit s':>6} {'epochs':>7}  ")
    lines += ["", head]
    for r in table_rows(result):
        if r["status"] != "ok":
            lines.append(f"{'-':>2} {r['method']:<10} {r['status'].upper()}: {r['reason']}")
            continue
        mark = ("PICK " if r["pick"] else "") + ("front" if r["front"] else "")
        lines.append(
            f"{_f(r['rank'], 'd') if r['rank'] else '-':>2} {r['method']:<10} {_f(r['accuracy']):>12} "
            f"{_f(r['image_auroc']):>9} {_f(r['aupro']):>6} {_f(r['p50_ms'], '.1f'):>7} {_f(r['p99_ms'], '.1f'):>7} "
            f"{_f(r['images_per_s'], '.1f'):>7} {_f(r['best_batch'], 'd'):>3} {_f(r['bundle_mb'], '.1f'):>6} "
            f"{_f(r['peak_rss_mb'], '.0f'):>6} {_f(r['fit_s'], '.1f'):>6} {r['epochs'] or '-':>7}  {mark}")
    lines.append(f"accuracy: {label} on the selection set; latency: p50 per image at batch 1 on {result.options.device}; "
                 "img/s: the best of the batch sizes (@bs); RSS: peak of the benchmark process")
    trained = [c for c in result.candidates if c.get("status") == "ok" and "used" in (c.get("epochs") or {})]
    for c in trained:
        ep = c["epochs"]
        short = (" (under a quarter of its default: its accuracy is understated; a larger --budget gives it more)"
                 if ep["used"] < 0.25 * ep["default"] else "")
        lines.append(f"  {c['method']} epochs: {ep['rule']}{short}")
    for c in result.candidates:
        runs = (c.get("bench") or {}).get("runs")
        if runs is not None and runs < result.options.bench_runs:
            lines.append(f"  note: {c['method']} timed on {runs} batches per size, not {result.options.bench_runs}: "
                         "at its pace more would take over a minute")
        sel = c.get("selection") or {}
        if sel.get("n_failed"):
            lines.append(f"  warning: {c['method']}: {sel['n_failed']} selection images could not be scored; its "
                         "accuracy is on the others")
        lines += [f"  warning: {c['method']}: {w}" for w in c.get("warnings", [])]
    n_bad = sum(n for k, n in v["select"].items() if k != "good")
    if n_bad < 30:
        lines.append(f"  note: {n_bad} defective selection images: at this size accuracies a few hundredths apart are "
                     "not a reliable difference, and ties go to the faster candidate")
    lines.append(f"Pareto front (accuracy up, latency down): {', '.join(result.front) or 'empty'}")
    if result.pick.name is None:
        lines.append(f"no pick: {result.pick.reason}")
    else:
        lines.append(f"pick: {result.pick.name} ({result.pick.reason})")
        if result.report is not None:
            r = result.report
            lines.append(f"  on the report set it was not chosen on ({r['n_images']} images): image AUROC "
                         f"{_f(r['image_auroc'])}, image F1-max {_f(r['image_f1_max'])}, pixel AUROC "
                         f"{_f(r['pixel_auroc'])}, AUPRO {_f(r['aupro'])}")
        else:
            lines.append("  no report set: the figures above are the selection set's (see the note on the sets)")
        lines.append(f"  bundle copied to {result.out / 'best'}")
    lines.append(f"wrote {result.out / 'select.json'} and {result.out / 'select.html'} "
                 f"({format_duration(result.wall_seconds)} wall time)")
    return "\n".join(lines)


def scatter_svg(points: list[tuple[str, float, float, bool, bool]], *, x_label: str, y_label: str,
                max_latency_ms: float | None = None, width: int = 640, height: int = 400) -> str:
    """Accuracy (y) against latency (x, log scale when it spans over 10x) as an SVG string.

    ``points``: (name, latency, accuracy, on the front, picked)."""
    ml, mr, mt, mb = 60, 30, 44, 50
    pw, ph = width - ml - mr, height - mt - mb
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60"><text x="10" y="30">'
                "no candidate to plot</text></svg>")
    xs = [p[1] for p in points] + ([max_latency_ms] if max_latency_ms else [])
    ys = [p[2] for p in points]
    x0, x1 = min(xs), max(xs)
    log = x0 > 0 and x1 / x0 > 10
    tx = (lambda v: math.log10(v)) if log else (lambda v: v)
    a, b = tx(x0), tx(x1)
    pad = (b - a) * 0.08 or (abs(a) * 0.1 or 1.0)
    a, b = a - pad, b + pad
    y0, y1 = min(ys), max(ys)
    ypad = (y1 - y0) * 0.1 or 0.02
    # Scores in [0, 1] (AUROC, AUPRO, F1) never plot above 1: a point at 1.0 sits on the top edge.
    y0, y1 = y0 - ypad, min(1.0, y1 + ypad) if y1 <= 1 else y1 + ypad

    def px(v: float) -> float:
        return ml + (tx(v) - a) / (b - a) * pw

    def py(v: float) -> float:
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12" role="img" aria-label="{e(y_label)} against {e(x_label)}">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>']
    for k in range(5):  # grid and tick labels
        yv = y0 + (y1 - y0) * k / 4
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{py(yv):.1f}" y2="{py(yv):.1f}" stroke="#eee"/>'
                     f'<text x="{ml - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.3f}</text>')
        xv_t = a + (b - a) * k / 4
        xv = 10 ** xv_t if log else xv_t
        parts.append(f'<text x="{ml + pw * k / 4:.1f}" y="{mt + ph + 16}" text-anchor="middle">{xv:.3g}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 10}" text-anchor="middle">{e(x_label)}'
                 f'{" (log scale)" if log else ""}</text>'
                 f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {mt + ph / 2})">'
                 f'{e(y_label)}</text>')
    parts.append(f'<text x="{ml}" y="18"><tspan fill="#d62728">&#9679; pick</tspan>  '
                 '<tspan fill="#1f77b4">&#9679; Pareto front</tspan>  <tspan fill="#999">&#9679; dominated</tspan></text>')
    if max_latency_ms:
        x = px(max_latency_ms)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#c00" stroke-dasharray="4 3"/>'
                     f'<text x="{x + 4:.1f}" y="{mt + 12}" fill="#c00">max latency {max_latency_ms:g} ms</text>')
    front = sorted((p for p in points if p[3]), key=lambda p: p[1])
    if len(front) > 1:
        path = " ".join(f"{px(p[1]):.1f},{py(p[2]):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for name, lat, acc, on_front, picked in points:
        colour = "#d62728" if picked else "#1f77b4" if on_front else "#999"
        r = 7 if picked else 5
        parts.append(f'<circle cx="{px(lat):.1f}" cy="{py(acc):.1f}" r="{r}" fill="{colour}">'
                     f'<title>{e(name)}: {acc:.3f} at {lat:.1f} ms</title></circle>'
                     # labels of points in the right quarter go to their left, inside the frame
                     + (f'<text x="{px(lat) - 8:.1f}" y="{py(acc) - 8:.1f}" text-anchor="end">'
                        if px(lat) > ml + 0.75 * pw else f'<text x="{px(lat) + 8:.1f}" y="{py(acc) - 8:.1f}">')
                     + f'{e(name)}{" (pick)" if picked else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_html(result: "SelectResult", path: Path) -> Path:
    """The page: what was compared on which images, the scatter, the table, the pick; the scatter
    also alone beside it (``select.svg``)."""
    e = html.escape
    metric = result.options.metric
    label = METRIC_LABELS[metric]
    rows = table_rows(result)
    points = [(r["method"], r["p50_ms"], r["accuracy"], r["front"], r["pick"]) for r in rows
              if r["status"] == "ok" and r["accuracy"] is not None and r["p50_ms"] is not None]
    svg = scatter_svg(points, x_label=f"latency, ms per image at batch 1 ({result.options.device})",
                      y_label=f"{label} (selection set)", max_latency_ms=result.options.max_latency_ms)
    cols = ["#", "method", label, "image AUROC", "AUPRO", "p50 ms", "p99 ms", "img/s", "@batch", "bundle MB",
            "peak RSS MB", "fit s", "epochs", ""]
    body = []
    for r in rows:
        if r["status"] != "ok":
            body.append(f"<tr class='bad'><td>-</td><td>{e(r['method'])}</td><td colspan='{len(cols) - 2}'>"
                        f"{e(str(r['status']))}: {e(str(r['reason']))}</td></tr>")
            continue
        cells = [str(r["rank"] or "-"), r["method"], _f(r["accuracy"]), _f(r["image_auroc"]), _f(r["aupro"]),
                 _f(r["p50_ms"], ".1f"), _f(r["p99_ms"], ".1f"), _f(r["images_per_s"], ".1f"),
                 _f(r["best_batch"], "d"), _f(r["bundle_mb"], ".1f"), _f(r["peak_rss_mb"], ".0f"),
                 _f(r["fit_s"], ".1f"), r["epochs"] or "-",
                 ("pick, " if r["pick"] else "") + ("front" if r["front"] else "")]
        cls = " class='pick'" if r["pick"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    v = result.validation
    pick_text = (f"<b>{e(result.pick.name)}</b>: {e(result.pick.reason)}" if result.pick.name
                 else f"no pick: {e(result.pick.reason)}")
    report = ""
    if result.report is not None:
        r = result.report
        report = (f"<p>The pick on the report set it was not chosen on ({r['n_images']} images): image AUROC "
                  f"{_f(r['image_auroc'])}, image F1-max {_f(r['image_f1_max'])}, pixel AUROC {_f(r['pixel_auroc'])}, "
                  f"AUPRO {_f(r['aupro'])}.</p>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adx select: {e(result.summary['category'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:nth-child(2){{text-align:left}}
tr.pick{{background:#fde8e8}}tr.bad td{{color:#900;text-align:left}}</style></head><body>
<h1>adx select: {e(result.summary['category'])}</h1>
<p>Data: {e(result.summary['dataset'])}. Selection set ({e(v['mode'])}): {e(str(v['select']))}; report set:
{e(str(v['report']) if v['report'] else 'none')}. {e(v['note'])}.</p>
<p>Accuracy: {e(label)} on the selection set. Latency: p50 per image at batch 1 on {e(result.options.device)}.
Pareto front: {e(', '.join(result.front) or 'empty')}.</p>
<p>Pick: {pick_text}</p>{report}
{svg}
<table><tr>{''.join(f'<th>{e(c)}</th>' for c in cols)}</tr>
{''.join(body)}</table>
<p>Wall time {e(format_duration(result.wall_seconds))}. Figures: select.json beside this page.</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    path.with_suffix(".svg").write_text(svg + "\n", encoding="utf-8")  # the plot alone, for a README or a report
    return path
