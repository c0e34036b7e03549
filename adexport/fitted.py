"""The fitted-model folder ``adx train`` writes: ``model.json`` + ``tensors.safetensors``, no pickle.

It holds everything export needs: method, config, preprocessing, backbone description, the fitted
tensors (graph weights, bank or statistics), calibration, and which dataset it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adexport.methods import get_method
from adexport.methods.base import FittedMethod, config_from_dict, config_to_dict
from adexport.training import save_loss_curve
from adx_runtime import __version__
from adx_runtime.bundle import atomic_dir, current_umask
from adx_runtime.errors import ConfigError

FITTED_FORMAT = "adexport-fitted-model"
FITTED_VERSION = 1
META = "model.json"
TENSORS = "tensors.safetensors"
LOSS_CURVE = "loss_curve.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: safetensors refuses headers above 100 MB; a length beyond that is damage, not a header to read.
MAX_SAFETENSORS_HEADER = 100_000_000


def is_fitted_folder(path: Path) -> str | None:
    """None if ``path`` is a fitted-model folder that ``--overwrite`` may replace, else why not.

    Replacing deletes the folder, so it must hold exactly what :func:`save_fitted` writes and each
    file must verify: plain files (no folders, no symlinks), a ``model.json`` with the fitted-model
    format tag, a ``tensors.safetensors`` whose header and size agree, a PNG loss curve if any.
    Anything else may be the user's and is refused.
    """
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror or type(exc).__name__})"
    checks = {META: _meta_problem, TENSORS: _safetensors_problem, LOSS_CURVE: _png_problem}
    names = {p.name for p in entries}
    if META not in names:
        return f"it has no {META}"
    extra = [p.name for p in entries if p.name not in checks]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it holds files that are not part of a fitted model ({shown})"
    for p in entries:
        if p.is_symlink() or not p.is_file():
            return f"its {p.name} is not a plain file (a {'symlink' if p.is_symlink() else 'folder or device'})"
    if TENSORS not in names:
        return f"it has no {TENSORS}"
    for p in entries:
        problem = checks[p.name](p)
        if problem:
            return problem
    return None


def _meta_problem(path: Path) -> str | None:
    try:
        data = _strict_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return f"its {META} is not valid JSON"
    if not isinstance(data, dict) or data.get("format") != FITTED_FORMAT:
        return f"its {META} is not an adexport fitted model"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then exactly those bytes; check that much without reading the data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8 or n > MAX_SAFETENSORS_HEADER:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        if 8 + n + max(ends, default=0) != size:
            raise ValueError("size does not match the header")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError, RecursionError):
        return f"its {TENSORS} is not a safetensors file"
    return None


def _png_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            ok = f.read(8) == PNG_SIGNATURE
    except OSError:
        ok = False
    return None if ok else f"its {LOSS_CURVE} is not a PNG image"


def _strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers beyond float range (1e999), which
    Python's parser accepts but no threshold or statistic may be."""

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is beyond the range of a float")
        return value

    return json.loads(text, parse_constant=constant, parse_float=number)


def check_replaceable(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, to write over something that is not a fitted model."""
    out = Path(out_dir)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ConfigError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    reason = "it is not a folder" if out.is_symlink() or not out.is_dir() else is_fitted_folder(out)
    if reason is not None:
        raise ConfigError(f"refusing to overwrite {str(out)!r}: it is not a fitted model ({reason}); --overwrite "
                          "replaces only a folder written by `adx train`. Choose another --out.")


def save_fitted(fitted: FittedMethod, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the fitted model atomically; returns its folder."""
    from safetensors.torch import save_file  # noqa: PLC0415

    import torch  # noqa: PLC0415

    meta = {
        "format": FITTED_FORMAT,
        "version": FITTED_VERSION,
        "adexport_version": __version__,
        "method": fitted.name,
        "config": config_to_dict(fitted.config),
        "preprocess": fitted.preprocess.to_dict(),
        "backbone": fitted.backbone.to_dict() if fitted.backbone else None,
        "calibration": fitted.calibration,
        "dataset": fitted.dataset,
        "fit": {"seconds": fitted.report.phases, "total_seconds": fitted.report.total, "sizes": fitted.report.sizes,
                "skipped_images": [{"file": f, "reason": r} for f, r in fitted.report.skipped],
                "loss_history": fitted.report.loss_history, "notes": fitted.report.notes},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    with atomic_dir(out_dir, overwrite=overwrite, replaceable=is_fitted_folder, what="fitted model") as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in fitted.tensors().items()}
        save_file(tensors, str(tmp / TENSORS))
        # safetensors writes its file 0600 whatever the umask; give it the mode every other file gets.
        os.chmod(tmp / TENSORS, 0o666 & ~current_umask())
        try:  # NaN or infinity is not JSON, and load_fitted would refuse it: refuse it here, writing nothing
            text = json.dumps(meta, indent=2, allow_nan=False)
        except ValueError:
            raise ConfigError(f"the fitted {fitted.name} model holds NaN or infinite values in its calibration or "
                              "report (the scores of the held-out images?); nothing was written. Check the training "
                              "images and options and train again") from None
        (tmp / META).write_text(text + "\n", encoding="utf-8")
        if fitted.report.loss_history:
            save_loss_curve(fitted.report.loss_history, tmp / LOSS_CURVE, title=f"{fitted.name}: mean training loss per epoch")
    return Path(out_dir)


def load_fitted(path: str | Path) -> FittedMethod:
    """Read a folder written by :func:`save_fitted`, checking all of it.

    A damaged folder is refused with one line (``ConfigError``) before export uses any of it:
    ``model.json`` must be strict JSON (no NaN or infinity) with a known method, a config that the
    method's config type accepts and finite thresholds; ``tensors.safetensors`` must be readable,
    hold exactly the method's tensors, all finite, that fit each other (one blank image is scored).
    """
    from safetensors.torch import load_file  # noqa: PLC0415

    import torch  # noqa: PLC0415

    root = Path(path)
    meta_path = root / META
    if not meta_path.is_file():
        hint = " (that is a bundle; `adx export` takes the folder `adx train` wrote)" if (root / "manifest.json").is_file() else ""
        raise ConfigError(f"{str(root)!r} is not a fitted model: it has no {META}{hint}")

    def damaged(what: str) -> ConfigError:
        return ConfigError(f"fitted model {str(root)!r} is damaged: {what}; re-run `adx train` to write it again")

    try:
        meta = _strict_json(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise damaged(f"its {META} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise damaged(f"its {META} is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FITTED_FORMAT or meta.get("version") != FITTED_VERSION:
        raise ConfigError(f"{str(meta_path)!r} is not a fitted model of version {FITTED_VERSION}; re-run `adx train`")
    entry = _checked_meta(meta, damaged)
    try:
        tensors = load_file(str(root / TENSORS))
    except Exception as exc:  # safetensors' own error type, OSError, ...: all mean the file is unusable
        raise damaged(f"its {TENSORS} cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise damaged(f"its {TENSORS} holds NaN or infinite values in {key}")
    try:
        fitted = entry.fitted_cls.from_saved(meta, tensors)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError, ConfigError) as exc:
        raise damaged(f"the model cannot be rebuilt from its {META} and {TENSORS} "
                      f"({type(exc).__name__}: {_first_line(exc)})") from None
    expected = set(fitted.tensors())
    if expected != set(tensors):
        odd = sorted(set(tensors) ^ expected)
        raise damaged(f"its {TENSORS} does not hold the tensors of a {entry.name} model (differs in "
                      f"{', '.join(odd[:4])}{' and more' if len(odd) > 4 else ''})")
    try:
        fitted.check_consistency()
    except ConfigError as exc:
        raise damaged(f"its {TENSORS} does not fit its {META}: {exc}") from None
    fit = meta.get("fit", {})
    fitted.calibration = meta["calibration"]
    fitted.dataset = meta.get("dataset", {})
    fitted.report.phases.update(fit.get("seconds", {}))
    fitted.report.sizes.update(fit.get("sizes", {}))
    fitted.report.loss_history = list(fit.get("loss_history", []))
    fitted.report.notes = list(fit.get("notes", []))
    return fitted


def _checked_meta(meta: dict[str, Any], damaged: Any) -> Any:
    """The method entry of a parsed ``model.json`` whose sections have the right shapes: a known
    method, a config its config type accepts (no foreign options), finite thresholds."""
    method = meta.get("method")
    if not isinstance(method, str):
        raise damaged(f"its {META} names no method")
    try:
        entry = get_method(method)
    except ConfigError as exc:
        raise damaged(f"its {META}: {exc}") from None
    for key, types in (("config", dict), ("preprocess", dict), ("backbone", (dict, type(None))), ("calibration", dict),
                       ("dataset", dict), ("fit", dict)):
        if key not in meta and key in ("dataset", "fit"):
            continue  # written by every release, but nothing downstream needs them to score
        if not isinstance(meta.get(key), types):
            raise damaged(f"its {META} has no {key} section" if key not in meta
                          else f"its {META} has a {type(meta[key]).__name__} as {key}")
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    foreign = sorted(set(meta["config"]) - fields)
    if foreign:
        raise damaged(f"its config has options {', '.join(foreign[:5])} that method {method!r} does not have")
    try:
        config_from_dict(entry.config_cls, meta["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise damaged(f"its config for method {method!r} is not valid: {_first_line(exc)}") from None
    calibration = meta["calibration"]
    for level in ("image", "pixel"):
        section = calibration.get(level)
        if level == "pixel" and section is None:
            continue  # image-level methods have no pixel threshold
        if not isinstance(section, dict):
            raise damaged(f"its calibration has no {level} section")
        for key in ("threshold", "scale"):
            value = section.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise damaged(f"its calibration.{level}.{key} is {value!r}, not a finite number")
    return entry


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
