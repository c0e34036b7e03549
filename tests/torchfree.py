"""Build a virtual environment in which torch is not installed, from what this one has installed.

The runtime's distributions (and everything they require, transitively) are linked into a fresh
venv's site-packages, together with ``adx_runtime`` and ``adx_cli``. torch, timm and ``adexport``
are not there, so ``import torch`` fails exactly as on an edge box installed with
``pip install 'adexport[cpu,eval]'``. No network and no pip are needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import adx_cli
import adx_runtime

#: What ``adexport[cpu]`` installs at the top level (without adexport itself), and with ``eval``.
CPU_DISTS = ["numpy", "pillow", "typer", "rich", "threadpoolctl", "onnxruntime", "faiss-cpu"]
RUNTIME_DISTS = [*CPU_DISTS, "scikit-learn", "scipy", "matplotlib"]
FORBIDDEN = {"torch", "torchvision", "timm"}


def _closure(names: list[str]) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                continue  # an optional platform dependency that is not installed here either
            todo.append(req.name)
    if FORBIDDEN & set(seen):
        raise RuntimeError(f"the runtime's dependencies pull in {FORBIDDEN & set(seen)}")
    return list(seen.values())


def make_torch_free_venv(path: Path, dists: list[str] = RUNTIME_DISTS) -> Path:
    """Create the venv at ``path`` with ``dists`` and what they require; returns its python executable."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)}))
    purelib.mkdir(parents=True, exist_ok=True)
    linked: set[str] = set()
    for dist in _closure(dists):
        for f in dist.files or []:
            top = f.parts[0]
            if top in linked or top.endswith(".pth") or top == ".." or top == "__pycache__" or top.startswith("__editable__"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists():
                (purelib / top).symlink_to(src)
                linked.add(top)
    for pkg in (adx_runtime, adx_cli):
        (purelib / pkg.__name__).symlink_to(Path(pkg.__file__).parent)
    return path / "bin" / "python"


def edge_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH: a checkout put on the path that way (as the
    development instructions do) would make ``adexport`` importable in the torch-free venv."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
