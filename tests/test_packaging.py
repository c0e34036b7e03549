"""Packaging: the extras never put onnxruntime and onnxruntime-gpu in one install, the runtime
imports no torch, and installed import names are not generic words."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_cpu_and_gpu_extras_carry_one_onnxruntime_each() -> None:
    ex = extras()
    assert "onnxruntime" in names(ex["cpu"]) and "onnxruntime-gpu" not in names(ex["cpu"])
    assert "onnxruntime-gpu" in names(ex["gpu"]) and "onnxruntime" not in names(ex["gpu"])
    for other in set(ex) - {"cpu", "gpu"}:
        assert not names(ex[other]) & {"onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12"}, other
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not names(base) & {"onnxruntime", "onnxruntime-gpu", "torch", "timm"}


def test_training_pins_admit_the_local_torch() -> None:
    from packaging.requirements import Requirement

    reqs = {Requirement(r).name: Requirement(r) for r in extras()["train"]}
    assert reqs["torch"].specifier.contains("2.14.1") and reqs["torchvision"].specifier.contains("0.29.1")


def test_runtime_sources_never_import_torch() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(torch|torchvision|timm|adexport)\b", re.M)
    offenders = [p for p in (ROOT / "deploy").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_the_runtime_and_cli_loads_no_torch() -> None:
    code = ("import sys, adx_runtime.predictor, adx_runtime.evaluate, adx_cli.app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'adexport')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_wheel_installs_only_adexport_adx_runtime_adx_synth_and_adx_cli(tmp_path: Path) -> None:
    """What lands in site-packages: real package names, never the folders cli/ or deploy/."""
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("adexport-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "adexport", "adx_runtime", "adx_synth", "adx_cli"}
    assert "adx_synth/digits.py" in names
    assert "adx_runtime/scorers/knn.py" in names and "adx_cli/app.py" in names
