"""The fitted-model folder ``adx train`` writes: ``model.json`` + ``tensors.safetensors``, no pickle.

It holds everything export needs: method, config, preprocessing, backbone description, the fitted
tensors (graph weights, bank or statistics), calibration, and which dataset it came from.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adexport.methods import get_method
from adexport.methods.base import FittedMethod, config_to_dict
from adexport.training import save_loss_curve
from adx_runtime import __version__
from adx_runtime.bundle import atomic_dir
from adx_runtime.errors import ConfigError

FITTED_FORMAT = "adexport-fitted-model"
FITTED_VERSION = 1
META = "model.json"
TENSORS = "tensors.safetensors"
LOSS_CURVE = "loss_curve.png"


def is_fitted_folder(path: Path) -> str | None:
    """None if ``path`` is a fitted-model folder that ``--overwrite`` may replace, else why not."""
    meta = path / META
    if not meta.is_file():
        return f"it has no {META}"
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return f"its {META} is not valid JSON"
    if not isinstance(data, dict) or data.get("format") != FITTED_FORMAT:
        return f"its {META} is not an adexport fitted model"
    extra = sorted(p.name for p in path.iterdir() if p.name not in (META, TENSORS, LOSS_CURVE))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"it holds files that are not part of a fitted model ({shown})"
    return None


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
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if fitted.report.loss_history:
            save_loss_curve(fitted.report.loss_history, tmp / LOSS_CURVE, title=f"{fitted.name}: mean training loss per epoch")
    return Path(out_dir)


def load_fitted(path: str | Path) -> FittedMethod:
    """Read a folder written by :func:`save_fitted`."""
    from safetensors.torch import load_file  # noqa: PLC0415

    root = Path(path)
    meta_path = root / META
    if not meta_path.is_file():
        hint = " (that is a bundle; `adx export` takes the folder `adx train` wrote)" if (root / "manifest.json").is_file() else ""
        raise ConfigError(f"{str(root)!r} is not a fitted model: it has no {META}{hint}")
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FITTED_FORMAT or meta.get("version") != FITTED_VERSION:
        raise ConfigError(f"{str(meta_path)!r} is not a fitted model of version {FITTED_VERSION}; re-run `adx train`")
    entry = get_method(meta["method"])
    fitted = entry.fitted_cls.from_saved(meta, load_file(str(root / TENSORS)))
    fitted.calibration = meta.get("calibration", {})
    fitted.dataset = meta.get("dataset", {})
    fitted.report.phases.update(meta.get("fit", {}).get("seconds", {}))
    fitted.report.sizes.update(meta.get("fit", {}).get("sizes", {}))
    fitted.report.loss_history = list(meta.get("fit", {}).get("loss_history", []))
    fitted.report.notes = list(meta.get("fit", {}).get("notes", []))
    return fitted
