"""``adx infer``: score files with a bundle and write one result line per image.

The CLI parses and prints; this module does the work: results as JSON lines or CSV, heatmap
overlays and raw maps at each image's own size, and a summary. A file that cannot be decoded gets
its own line with the reason, and the rest are scored.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence

from adx_runtime.errors import ConfigError
from adx_runtime.images import decode_image
from adx_runtime.overlay import RAW_MAP_FORMATS, save_overlay, save_raw_map
from adx_runtime.predictor import FileResult, Predictor
from adx_runtime.progress import SILENT, Progress

if TYPE_CHECKING:
    from adx_runtime.client import RemoteModel

RESULT_FORMATS = ("jsonl", "csv")


@dataclass
class InferSummary:
    scored: int = 0
    failed: int = 0
    flagged: int = 0
    threshold: float = 0.0
    maps_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        total = self.scored + self.failed
        threshold = f" (threshold {self.threshold:.4g})" if self.threshold == self.threshold else ""
        line = f"scored {self.scored} of {total} images: {self.flagged} anomalous{threshold}, {self.failed} failed"
        if self.maps_dir is not None:
            line += f"; maps in {self.maps_dir}"
        return "\n".join([line, *self.notes])


def overlay_names(paths: Sequence[Path]) -> dict[str, str]:
    """Unique file stems for maps: the file name, prefixed with its folder when names repeat
    (test/cut/000.png and test/hole/000.png), numbered if that still repeats."""
    stems = Counter(p.stem for p in paths)
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, p in enumerate(paths):
        name = p.stem if stems[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        if name in used:
            name = f"{i:05d}_{name}"
        used.add(name)
        out[str(p)] = name
    return out


def _per_image_scaled(anomaly_map: Any) -> Any:
    """A raw map scaled to [0, 1] by its own range: for heatmaps of a bundle without pixel calibration."""
    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    return (anomaly_map - lo) / (hi - lo) if hi > lo else anomaly_map * 0.0


def json_line(row: dict[str, Any]) -> str:
    """One JSON object on one line; a missing or non-finite number is null (never the non-JSON NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False)


def score_files(
    predictor: Predictor,
    paths: Sequence[Path],
    sink: IO[str],
    *,
    fmt: str = "jsonl",
    batch_size: int = 8,
    save_maps: Path | None = None,
    raw_maps: str | None = None,
    progress: Progress = SILENT,
) -> InferSummary:
    """Score ``paths``, write one line per image to ``sink``; with ``save_maps`` write
    ``NAME_heatmap.png`` overlays (and ``NAME_map.npy`` / ``NAME_map.png`` with ``raw_maps``) at
    each image's own size."""
    if fmt not in RESULT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(RESULT_FORMATS)}, got {fmt!r}")
    if raw_maps is not None and raw_maps not in RAW_MAP_FORMATS:
        raise ConfigError(f"--raw-maps must be one of {', '.join(RAW_MAP_FORMATS)}, got {raw_maps!r}")
    if raw_maps is not None and save_maps is None:
        raise ConfigError("--raw-maps writes into the --save-maps folder; give --save-maps DIR too")
    summary = InferSummary(threshold=predictor.image_threshold)
    want_maps = save_maps is not None and predictor.has_map
    if save_maps is not None and not predictor.has_map:
        summary.notes.append(f"no maps written: the {predictor.method} bundle scores whole images and has no "
                             "anomaly map")
    else:
        summary.maps_dir = save_maps
    write = _row_writer(sink, fmt)
    if want_maps and predictor.pixel_threshold is None:
        summary.notes.append("this bundle has no pixel calibration: each heatmap is scaled to its own map's range "
                             "(not comparable between images; no pixel threshold is drawn)")
    names = overlay_names(paths) if want_maps else {}
    with progress.task(f"Scoring {len(paths)} images", len(paths)) as advance:
        for res in predictor.predict_files(paths, batch_size=batch_size, keep_maps=want_maps):
            advance(1)
            write(res, summary)
            if want_maps and res.ok and res.anomaly_map is not None:
                assert save_maps is not None and res.size is not None
                norm = (predictor.normalized_maps(res.anomaly_map) if predictor.pixel_threshold is not None
                        else _per_image_scaled(res.anomaly_map))
                stem = names[res.path]
                save_overlay(decode_image(res.path), norm, predictor.preprocess, save_maps / f"{stem}_heatmap.png")
                if raw_maps:
                    suffix = ".npy" if raw_maps == "npy" else ".png"
                    save_raw_map(res.anomaly_map, res.size, predictor.preprocess, save_maps / f"{stem}_map{suffix}",
                                 raw_maps, norm_map=norm)
    return summary


def _row_writer(sink: IO[str], fmt: str) -> Callable[[FileResult, InferSummary], None]:
    """One result line per image (JSON lines or CSV), counted into the summary: the same lines for
    local and served inference."""
    writer = csv.writer(sink) if fmt == "csv" else None
    if writer:
        writer.writerow(["path", "image_score", "normalized_score", "label", "error", "note"])

    def write(res: FileResult, summary: InferSummary) -> None:
        label = None if res.label is None else ("anomalous" if res.label else "normal")
        summary.failed += not res.ok
        summary.scored += res.ok
        summary.flagged += bool(res.label)
        if writer:
            writer.writerow([res.path, res.image_score, res.normalized_score, label, res.error or "", res.note or ""])
        else:
            row = {"path": res.path, "error": res.error} if res.error else {
                "path": res.path, "image_score": res.image_score, "normalized_score": res.normalized_score,
                "label": label}
            if res.note:
                row["note"] = res.note
            sink.write(json_line(row) + "\n")

    return write


def score_files_remote(model: "RemoteModel", paths: Sequence[Path], sink: IO[str], *, fmt: str = "jsonl",
                       progress: Progress = SILENT) -> InferSummary:
    """Like :func:`score_files`, through a served model (``adx infer --server``): one request per image."""
    if fmt not in RESULT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(RESULT_FORMATS)}, got {fmt!r}")
    summary = InferSummary(threshold=float("nan"))
    summary.notes.append(f"scored by {model.name} on the server (its calibrated threshold)")
    write = _row_writer(sink, fmt)
    with progress.task(f"Scoring {len(paths)} images on the server", len(paths)) as advance:
        for res in model.predict_files(paths):
            advance(1)
            write(res, summary)
    return summary
