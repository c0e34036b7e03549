"""``adx infer``: score files with a bundle and write one result line per image.

The CLI parses and prints; this module does the work: results as JSON lines or CSV, heatmap
overlays and raw maps at each image's own size, and a summary. A file that cannot be decoded gets
its own line with the reason, and the rest are scored.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
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


def map_stems(paths: Sequence[Path], roots: Sequence[Path | None] | None = None) -> dict[str, str]:
    """Where each image's maps go under ``--save-maps``: ``{str(path): stem}``, maps ``STEM_heatmap.png``
    (``STEM_map.npy``, ``STEM_map.png``); ``STEM`` may hold sub-folders.

    The stem is the image's path relative to the root of the command-line argument that named it
    (``roots[i]``: a folder given, its path inside it; a glob, below the pattern's fixed leading
    folders), without its suffix; a file given by name (root None) is its file name. So one image
    gets one name whatever else is in the batch. Two inputs that would share a name: the later, in
    command-line order, gets ``_2``, ``_3``, ... (compared without case, for case-insensitive file
    systems). The same path named twice keeps its one name.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, path in enumerate(paths):
        key = str(path)
        if key in out:
            continue
        root = roots[i] if roots is not None else None
        rel = Path(path.name)
        if root is not None:
            try:
                inside = path.relative_to(root)
            except ValueError:
                inside = rel
            if inside.parts and ".." not in inside.parts and not inside.is_absolute():
                rel = inside
        stem = (rel.with_suffix("") if rel.suffix else rel).as_posix()
        name, n = stem, 1
        while name.casefold() in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name.casefold())
        out[key] = name
    return out


def map_files(save_maps: Path, stem: str, raw_maps: str | None) -> tuple[Path, Path | None]:
    """The heatmap overlay and the raw map (None without ``raw_maps``) of one image."""
    raw = None if raw_maps is None else save_maps / f"{stem}_map{'.npy' if raw_maps == 'npy' else '.png'}"
    return save_maps / f"{stem}_heatmap.png", raw


def _check_maps_spare_inputs(paths: Sequence[Path], save_maps: Path, stems: dict[str, str],
                             raw_maps: str | None) -> None:
    """Refuse, before scoring, a map that would be written over one of the input images (maps saved
    into the images' own folder, next to an image named like another image's map)."""
    inputs: dict[tuple[int, int], Path] = {}  # (device, inode): one stat per input, not one per pair
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        inputs.setdefault((st.st_dev, st.st_ino), path)
    for path in paths:
        for target in map_files(save_maps, stems[str(path)], raw_maps):
            try:
                st = os.stat(target) if target is not None else None
            except OSError:
                continue
            if st is not None and (st.st_dev, st.st_ino) in inputs:
                raise ConfigError(f"--save-maps would write {str(target)!r} over the input image "
                                  f"{str(inputs[(st.st_dev, st.st_ino)])!r}; give --save-maps a folder of its own")


def display_path(path: str) -> str:
    """``path`` as valid Unicode text: bytes of a file name that are not UTF-8 (held by Python as
    lone surrogates) become U+FFFD, which every JSON and CSV reader accepts."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = path.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")


def path_bytes(path: str) -> str | None:
    """The exact bytes of a file name that is not valid UTF-8, base64; None for a UTF-8 name."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return base64.b64encode(os.fsencode(path)).decode("ascii")


def _per_image_scaled(anomaly_map: Any) -> Any:
    """A raw map scaled to [0, 1] by its own range: for heatmaps of a bundle without pixel calibration."""
    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    return (anomaly_map - lo) / (hi - lo) if hi > lo else anomaly_map * 0.0


def json_line(row: dict[str, Any]) -> str:
    """One JSON object on one line; a missing or non-finite number is null (never the non-JSON NaN),
    and every string valid Unicode (no lone surrogate escapes, which jq and JavaScript garble)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v)
                 else display_path(v) if isinstance(v, str) else v) for k, v in row.items()}
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
    roots: Sequence[Path | None] | None = None,
    progress: Progress = SILENT,
) -> InferSummary:
    """Score ``paths``, write one line per image to ``sink``; with ``save_maps`` write
    ``STEM_heatmap.png`` overlays (and ``STEM_map.npy`` / ``STEM_map.png`` with ``raw_maps``) at
    each image's own size, named by :func:`map_stems` from ``roots`` (the command-line argument
    each path came from), and name them on the image's line."""
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
    write = _row_writer(sink, fmt, maps=want_maps, raw_maps=raw_maps)
    if want_maps and predictor.pixel_threshold is None:
        summary.notes.append("this bundle has no pixel calibration: each heatmap is scaled to its own map's range "
                             "(not comparable between images; no pixel threshold is drawn)")
    stems = map_stems(paths, roots) if want_maps else {}
    if want_maps:
        assert save_maps is not None
        _check_maps_spare_inputs(paths, save_maps, stems, raw_maps)
    with progress.task(f"Scoring {len(paths)} images", len(paths)) as advance:
        for res in predictor.predict_files(paths, batch_size=batch_size, keep_maps=want_maps):
            advance(1)
            written: tuple[Path, Path | None] | None = None
            if want_maps and res.ok and res.anomaly_map is not None:
                assert save_maps is not None and res.size is not None
                norm = (predictor.normalized_maps(res.anomaly_map) if predictor.pixel_threshold is not None
                        else _per_image_scaled(res.anomaly_map))
                heatmap, raw = written = map_files(save_maps, stems[res.path], raw_maps)
                save_overlay(decode_image(res.path), norm, predictor.preprocess, heatmap)
                if raw is not None and raw_maps is not None:
                    save_raw_map(res.anomaly_map, res.size, predictor.preprocess, raw, raw_maps, norm_map=norm)
            write(res, summary, written)
    return summary


def _row_writer(sink: IO[str] | None, fmt: str, *, maps: bool = False, raw_maps: str | None = None,
                emit: Callable[[dict[str, Any]], None] | None = None) -> Callable[..., None]:
    """One result line per image (JSON lines or CSV), counted into the summary: the same lines for
    local and served inference. With ``maps`` each line names its heatmap (and raw map) file.

    A file name that is not valid UTF-8 is written as text with U+FFFD for its undecodable bytes,
    and its exact bytes go, base64, into ``path_bytes`` (JSON: only on such lines; CSV: a column
    left empty for UTF-8 names). ``emit`` (JSON lines only) takes each row as a dict instead of
    ``sink``, for callers that add fields and write it themselves (``adx watch``'s sinks)."""
    writer = csv.writer(sink) if fmt == "csv" else None
    map_columns = (["heatmap"] + (["raw_map"] if raw_maps else [])) if maps else []
    if writer:
        writer.writerow(["path", "image_score", "normalized_score", "label", "error", "note", *map_columns,
                         "path_bytes"])

    def write(res: FileResult, summary: InferSummary, written: tuple[Path, Path | None] | None = None) -> None:
        label = None if res.label is None else ("anomalous" if res.label else "normal")
        summary.failed += not res.ok
        summary.scored += res.ok
        summary.flagged += bool(res.label)
        files = {}
        if maps:
            files["heatmap"] = None if written is None else str(written[0])
            if raw_maps:
                files["raw_map"] = None if written is None or written[1] is None else str(written[1])
        exact = path_bytes(res.path)
        if writer:
            writer.writerow([display_path(res.path), res.image_score, res.normalized_score, label,
                             display_path(res.error or ""), display_path(res.note or ""),
                             *(display_path(v or "") for v in files.values()), exact or ""])
        else:
            row: dict[str, Any] = {"path": res.path}
            if exact is not None:
                row["path_bytes"] = exact
            if res.error:
                row["error"] = res.error
            else:
                row.update(image_score=res.image_score, normalized_score=res.normalized_score, label=label)
            if res.note:
                row["note"] = res.note
            if files and res.ok:
                row.update(files)
            if emit is not None:
                emit(row)
            else:
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
