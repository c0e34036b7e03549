"""Which files a command scores, and where its results may go, decided before any work.

``adx infer``, ``adx bench --images`` and ``adx export --parity-images`` take files, folders and
glob patterns; :func:`expand_inputs` turns them into paths in the order given, keeping every path
named (one that cannot be scored gets its own error line later). :func:`check_outputs` refuses a
result file or maps folder that cannot be written or would destroy an input, before scoring starts.
Here rather than in the CLI so that any front end (a service, a script) discovers inputs the same way.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

from adx_runtime.errors import ConfigError
from adx_runtime.images import IMAGE_LIKE_SUFFIXES, IMAGE_SUFFIXES

__all__ = ["check_outputs", "expand_inputs", "expand_inputs_rooted"]


def _image_like(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_LIKE_SUFFIXES


def _scan_folder(folder: Path, recursive: bool, seen: set[str] | None = None) -> list[Path]:
    """Every image-like entry of ``folder``, whatever it is (a FIFO, a device link, a folder named
    x.png): each gets a result line, with the reason when it cannot be scored. With ``recursive``,
    sub-folders are entered, symbolic links to folders too, but a folder already visited (a link
    loop) is reported instead of entered again."""
    seen = set() if seen is None else seen
    seen.add(os.path.realpath(folder))
    out: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return [folder]  # decode_image then says what is wrong with it
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir and recursive:
            if os.path.realpath(path) in seen:
                out.append(path)  # a loop: reported as a link to a folder, not entered
            else:
                out += _scan_folder(path, recursive, seen)
        elif _image_like(path):
            out.append(path)
    return out


def _pattern_root(pattern: str) -> Path:
    """The fixed leading folders of a glob pattern (``data/*/test/*.png`` -> ``data``)."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def expand_inputs_rooted(inputs: list[str], recursive: bool = False) -> list[tuple[Path, Optional[Path]]]:
    """Like :func:`expand_inputs`, each path with the root of the argument that named it: the
    folder given, a pattern's fixed leading folders, or None for a file named itself (what
    ``adx infer --save-maps`` names maps after)."""
    out: list[tuple[Path, Optional[Path]]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += [(p, path) for p in sorted(_scan_folder(path, recursive))]
        elif not os.path.lexists(path) and any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True)
                             if not Path(p).is_dir() or _image_like(Path(p)))
            if not matches:
                raise ConfigError(f"the pattern {item!r} matches no files")
            root = _pattern_root(item)
            out += [(p, root) for p in matches]
        else:
            out.append((path, None))
    if not out:
        raise ConfigError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return out


def expand_inputs(inputs: list[str], recursive: bool = False) -> list[Path]:
    """Files, folders (their images) and glob patterns -> paths, in the order given.

    Every path named is kept, even one that does not exist or is not a file: scoring gives it its
    own error line and the others are still scored. A pattern that matches nothing is an error.
    """
    return [path for path, _ in expand_inputs_rooted(inputs, recursive)]


def check_outputs(output: str, save_maps: Optional[Path], inputs: list[Path]) -> None:
    """Refuse, before anything is scored, a result file or maps folder that cannot be written or
    would destroy something (an input image, a folder)."""
    if output != "-":
        path = Path(output)
        if path.is_dir():
            raise ConfigError(f"--output {output!r} is a folder; give a file name, e.g. {str(path / 'scores.jsonl')!r}")
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"--output {output!r}: the folder {str(parent)!r} does not exist; create it first")
        if path.exists():
            for p in inputs:
                try:
                    same = os.path.samefile(path, p)
                except OSError:
                    continue
                if same:
                    raise ConfigError(f"--output {output!r} is one of the input images ({str(p)!r}); writing results "
                                      "there would destroy it. Choose another file name.")
            if not os.access(path, os.W_OK):
                raise ConfigError(f"--output {output!r} is not writable (permission denied)")
        elif not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {output!r}: the folder {str(parent)!r} is not writable (permission denied)")
    if save_maps is not None:
        if save_maps.exists() and not save_maps.is_dir():
            raise ConfigError(f"--save-maps {str(save_maps)!r} is a file, not a folder; give a folder for the heatmaps")
        existing = save_maps  # the folder, or the nearest part of its path that exists (it is created later)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"--save-maps {str(save_maps)!r} cannot be created: {str(existing)!r} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--save-maps {str(save_maps)!r} is not writable ({str(existing)!r}: permission denied)")
