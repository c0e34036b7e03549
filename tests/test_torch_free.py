"""The deployment promise: a bundle scores in an environment where torch is not installed, and
its scores match the trained PyTorch model within the tolerance the manifest records."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import list_test_images
from torchfree import CPU_DISTS, edge_env, make_torch_free_venv

from adx_runtime.preprocess import load_image, stack


@pytest.fixture(scope="session")
def torch_free_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_torch_free_venv(tmp_path_factory.mktemp("venv") / "edge")


def run(python: Path, *args: str) -> subprocess.CompletedProcess:
    # From the venv's own folder: the repository checkout must not be on sys.path, as on an edge box.
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=300, cwd=python.parent,
                          env=edge_env())


def test_torch_cannot_be_imported_there(torch_free_python: Path) -> None:
    proc = run(torch_free_python, "-c", "import torch")
    assert proc.returncode != 0
    assert "No module named 'torch'" in proc.stderr
    proc = run(torch_free_python, "-c", "import adexport")
    assert "No module named 'adexport'" in proc.stderr


def test_scores_and_maps_match_torch_without_torch(fitted, bundle: Path, dataset: Path, torch_free_python: Path,
                                                  tmp_path: Path) -> None:
    images = list_test_images(dataset)
    x = stack([load_image(p, fitted.preprocess) for p in images])
    ref = fitted.reference(torch.from_numpy(x))  # the full torch pipeline: graph, exact kNN, torch upsample+blur

    out = tmp_path / "runtime.npz"
    script = textwrap.dedent(f"""
        import sys
        from adx_runtime.predictor import Predictor
        p = Predictor.load({str(bundle)!r})
        pred = p.predict({[str(i) for i in images]!r})
        import numpy as np
        np.savez({str(out)!r}, image_scores=pred.image_scores, maps=pred.anomaly_maps)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print("providers", p.providers)
    """)
    proc = run(torch_free_python, "-c", script)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)

    manifest = json.loads((bundle / "manifest.json").read_text())
    tol = manifest["parity"]["tolerance"]
    ref_scores, ref_maps = ref.image_scores.numpy(), ref.anomaly_maps.numpy()
    score_err = np.abs(got["image_scores"] - ref_scores).max() / np.abs(ref_scores).max()
    map_err = np.abs(got["maps"] - ref_maps).max() / np.abs(ref_maps).max()
    assert got["maps"].shape == ref_maps.shape == (len(images), 64, 64)
    assert score_err <= tol["image_scores"], score_err
    assert map_err <= tol["maps"], map_err


def test_cli_infer_runs_without_torch(bundle: Path, dataset: Path, torch_free_python: Path, tmp_path: Path) -> None:
    from adx_runtime.predictor import Predictor

    folder = dataset / "weave" / "test" / "hole"
    out = tmp_path / "scores.jsonl"
    proc = run(torch_free_python, "-m", "adx_cli", "infer", str(bundle), str(folder), "-o", str(out),
               "--save-maps", str(tmp_path / "maps"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    files = sorted(folder.glob("*.png"))
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]
    expected = Predictor.load(bundle).predict(files)
    np.testing.assert_allclose([r["image_score"] for r in rows], expected.image_scores, rtol=1e-5)
    assert [r["label"] for r in rows] == ["anomalous" if b else "normal" for b in expected.labels]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [f"{f.stem}_heatmap.png" for f in files]


def test_bench_and_calibrate_run_without_torch(bundle: Path, dataset: Path, torch_free_python: Path,
                                               tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "bench.json"
    proc = run(torch_free_python, "-m", "adx_cli", "bench", str(bundle), "--batch-sizes", "1,2", "--runs", "2",
               "--warmup", "1", "--images", str(dataset / "weave" / "test" / "good"), "--json", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["torch_imported"] is False and [r["batch_size"] for r in result["results"]] == [1, 2]

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    proc = run(torch_free_python, "-m", "adx_cli", "calibrate", str(copy), str(dataset), "-c", "weave", "-q",
               "--force")  # the tiny model's F1 threshold flags every good image: refused without --force
    assert proc.returncode == 0, proc.stderr
    assert "image threshold" in proc.stdout
    assert json.loads((copy / "manifest.json").read_text())["calibration"]["history"][-1]["mode"] == "f1"


def test_commands_that_need_an_extra_say_so_in_one_line(bundle: Path, dataset: Path, torch_free_python: Path,
                                                        tmp_path: Path) -> None:
    """Without torch (and, in a second venv, without the eval extra) each such command stops at once
    with one line naming the extra to install: no traceback, nothing scored first. The commands run
    side by side to keep this quick."""
    core_python = make_torch_free_venv(tmp_path / "core", CPU_DISTS)
    proc = run(core_python, "-c", "import sklearn")
    assert proc.returncode != 0 and "No module named 'sklearn'" in proc.stderr
    cases = [
        (torch_free_python, ["train", str(dataset), "-c", "weave", "-o", str(tmp_path / "m")], "train"),
        (torch_free_python, ["export", str(tmp_path / "m"), "-o", str(tmp_path / "b")], "train"),
        (torch_free_python, ["demo", "-o", str(tmp_path / "d")], "train"),
        (torch_free_python, ["methods"], "train"),
        (torch_free_python, ["bench-fit"], "train"),
        (core_python, ["eval", str(bundle), str(dataset), "-c", "weave"], "eval"),
        (core_python, ["calibrate", str(bundle), str(dataset), "-c", "weave"], "eval"),
    ]
    procs = [subprocess.Popen([str(python), "-m", "adx_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=python.parent, env=edge_env()) for python, args, _ in cases]
    for (_, args, extra), p in zip(cases, procs):
        out, err = p.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert p.returncode == 1 and "Traceback" not in err, (args, err)
        assert len(lines) == 1 and f"pip install 'adexport[{extra}]'" in lines[0], (args, err)
        assert not out.strip(), (args, out)
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    # what needs no torch still runs there: a bundle to a Triton repository
    proc = run(torch_free_python, "-m", "adx_cli", "export", str(bundle), "--format", "triton",
               "-o", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t" / "patchcore_weave" / "1").is_dir()
