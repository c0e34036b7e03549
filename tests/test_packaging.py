"""Packaging: the extras never put onnxruntime and onnxruntime-gpu in one install, the runtime
imports no torch, and installed import names are not generic words."""

from __future__ import annotations

import json
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
        assert not names(ex[other]) & {"onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cuvs"}, other
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


#: pip's words when the package index cannot be reached (no network, DNS, proxy refusal).
_UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                "Network is unreachable", "Could not fetch URL", "ProxyError", "ConnectTimeout", "Read timed out")


@pytest.mark.slow
def test_gpu_extra_resolves_to_wheels_only() -> None:
    """The gpu extra installs from the package index alone: every requirement pip would install is a
    wheel, none a source distribution (TensorRT's libs on the index are sdist stubs that download
    from NVIDIA's own index; a resolution that reaches one fails here). Resolved, not downloaded."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--quiet",
         "--retries", "0", "--timeout", "20", "--report", "-", f"{ROOT}[gpu]"],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0 and any(word in proc.stderr for word in _UNREACHABLE):
        pytest.skip("the package index cannot be reached from here, so the gpu extra cannot be resolved")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    installs = [i for i in report["install"] if "dir_info" not in i["download_info"]]  # the project itself
    sdists = [f"{i['metadata']['name']} {i['metadata']['version']}" for i in installs
              if not i["download_info"]["url"].endswith(".whl")]
    assert sdists == []
    got = {i["metadata"]["name"].lower() for i in installs}
    assert {"onnxruntime-gpu", "faiss-gpu-cuvs", "nvidia-cudnn-cu13", "nvidia-cuda-runtime"} <= got
    assert not {n for n in got if n.endswith("-cu12")}  # one CUDA major: 13
