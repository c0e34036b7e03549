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
    assert "adx_runtime/bundle/manifest.schema.json" in names  # package data: the manifest's JSON Schema
    # Every package folder of the source tree is in the wheel: a sub-package missing from
    # pyproject's list would install without its modules, and importing it would fail there only.
    for source, package in (("adexport", "adexport"), ("deploy/adx_runtime", "adx_runtime"),
                            ("deploy/adx_synth", "adx_synth"), ("cli/adx_cli", "adx_cli")):
        for init in (ROOT / source).rglob("__init__.py"):
            assert f"{package}/{init.relative_to(ROOT / source).as_posix()}" in names


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


#: Import name -> source folder, for the import-graph test below.
SOURCES = {"adexport": "adexport", "adx_runtime": "deploy/adx_runtime", "adx_synth": "deploy/adx_synth",
           "adx_cli": "cli/adx_cli"}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (function-level imports too:
    deferring an import hides a cycle from Python, not from the design). ``if TYPE_CHECKING``
    blocks are skipped: they never run."""
    import ast

    files = {}
    for package, folder in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test).endswith("TYPE_CHECKING") for n in ast.walk(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def test_no_import_cycle_between_project_modules() -> None:
    graph = _import_graph()
    assert "adx_synth.digits" in graph and "adx_runtime.bundle.manifest" in graph  # the walk found the tree
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [module, target])
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []
