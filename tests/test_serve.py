"""`adx serve` on a real Triton server (PyTriton's tritonserver) on 127.0.0.1, driven by tritonclient.

One server for the module serves a PatchCore and a PaDiM bundle, plus a tampered bundle and one of an
unknown schema version, which must be reported while the good ones serve. Every request loop is bounded
(a fixed list of files, client timeouts), and the last test stops the server with SIGTERM and checks that
no process of it is left.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import list_test_images
from servekit import ROOT, free_ports, run_py, serve_python

from adx_runtime.predictor import Predictor

pytestmark = pytest.mark.slow

STARTUP_S = 240


@dataclass
class Served:
    proc: subprocess.Popen
    http: int
    grpc: int
    python: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    startup: str = ""
    workdir: str = ""  # adx serve's work folder (its tritonserver and stubs run from there)


def _cmdlines() -> list[list[str]]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            out.append((p / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
    return out


def _pump(stream, sink: list[str], lines: "queue.Queue[str] | None") -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))
        if lines is not None:
            lines.put(line)


@pytest.fixture(scope="module")
def served(bundle: Path, padim_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    python = serve_python()
    tmp = tmp_path_factory.mktemp("serve")
    tampered = tmp / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "memory_bank.faiss").write_bytes(b"x" * 64)
    future = tmp / "future"
    shutil.copytree(padim_bundle, future)
    manifest = json.loads((future / "manifest.json").read_text())
    (future / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    http, grpc = free_ports(2)
    proc = subprocess.Popen(
        [str(python), "-m", "adx_cli", "serve", str(bundle), str(padim_bundle), str(tampered), str(future),
         "--http-port", str(http), "--grpc-port", str(grpc), "--threads", "1", "--startup-timeout", "180"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    s = Served(proc, http, grpc, python)
    lines: queue.Queue[str] = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, s.stdout, lines), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, s.stderr, None), daemon=True)]
    for t in pumps:
        t.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if "listening on" in line:
                s.startup = line.strip()
                break
        assert s.startup, f"adx serve did not start: {proc.poll()=} {s.stdout} {s.stderr}"
        s.workdir = next(a.split("=", 1)[1].rsplit("/repo", 1)[0] for cmd in _cmdlines()
                         if f"--http-port={http}" in cmd for a in cmd if a.startswith("--model-repository="))
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_startup_line_says_where_it_listens_and_what_is_ready(served: Served) -> None:
    line = served.startup
    assert f"listening on http://127.0.0.1:{served.http} (HTTP) and 127.0.0.1:{served.grpc} (gRPC)" in line
    assert "ready: patchcore_weave (v1; bytes: patchcore_weave_image), padim_weave (v1; bytes: padim_weave_image)" in line
    assert "failed: " in line and line.endswith("tampered, " + line.rsplit(", ", 1)[-1]) and "future" in line
    import urllib.error
    import urllib.request

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{served.http}{path}", timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status("/v2/health/live") == 200 and status("/v2/health/ready") == 200
    assert status("/v2/models/padim_weave_image/ready") == 200 and status("/v2/models/no_such_model/ready") == 400
    errors = "\n".join(served.stderr)
    assert "tampered is not served" in errors and "failed its checksum" in errors
    assert "future is not served" in errors and "schema version 99" in errors


CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.http as th
from adx_runtime.bundle import load_manifest
from adx_runtime.client import RemoteModel
from adx_runtime.images import decode_image
from adx_runtime.preprocess import PreprocessConfig, preprocess_image
http, grpc, out, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
arrays, errors = {}, {}
for name, bundle in spec["models"].items():
    for url in (f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}"):
        model = RemoteModel(url, name, timeout=60)
        rows = list(model.predict_files(spec["files"], keep_maps=True))  # one request per file, in order
        key = f"{name}_{url.split(':')[0]}"
        ok = [r for r in rows if r.ok]
        arrays[key + "_scores"] = np.array([r.image_score for r in ok], np.float32)
        arrays[key + "_norm"] = np.array([r.normalized_score for r in ok], np.float32)
        arrays[key + "_labels"] = np.array([r.label for r in ok])
        arrays[key + "_maps"] = np.stack([r.anomaly_map for r in ok])
        errors[key] = [r.error for r in rows]
        model.close()
    # The float entry point: preprocessed tensors, a batch of 4 in one request, the map left out.
    pre = PreprocessConfig.from_dict(load_manifest(bundle)["input"])
    good = [f for f in spec["files"] if not f.endswith(".txt")][:4]
    x = np.stack([preprocess_image(decode_image(f), pre) for f in good])
    client = th.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=60)
    t = th.InferInput("image", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    res = client.infer(name, [t], outputs=[th.InferRequestedOutput("image_score"), th.InferRequestedOutput("label")])
    arrays[name + "_float_scores"] = res.as_numpy("image_score").reshape(-1)
    errors[name + "_float_outputs"] = sorted(o["name"] for o in res.get_response()["outputs"])
    client.close()
np.savez(out, **arrays)
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def remote(served: Served, bundle: Path, padim_bundle: Path, dataset: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("client")
    files = [str(p) for p in list_test_images(dataset)[:6]]
    bad = tmp / "notes.txt"
    bad.write_text("not an image")
    sent = files[:2] + [str(bad)] + files[2:]  # the bad one in the middle: the next request must still work
    spec = {"models": {"patchcore_weave": str(bundle), "padim_weave": str(padim_bundle)}, "files": sent}
    errors = run_py(served.python, CLIENT, str(served.http), str(served.grpc), str(tmp / "out.npz"), json.dumps(spec),
                    timeout=300)
    with np.load(tmp / "out.npz") as data:
        arrays = dict(data)
    return {"errors": errors, "arrays": arrays, "files": files}


@pytest.mark.parametrize("name", ["patchcore_weave", "padim_weave"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_scores_and_maps_equal_the_in_process_predictor(remote: dict, bundle: Path, padim_bundle: Path,
                                                               name: str, protocol: str) -> None:
    predictor = Predictor.load(bundle if name.startswith("patchcore") else padim_bundle)
    ref = predictor.predict(remote["files"])
    got = {k.split(f"{name}_{protocol}_", 1)[1]: v for k, v in remote["arrays"].items()
           if k.startswith(f"{name}_{protocol}_")}
    # float32 rounding: the server's numpy (1.26, pinned by nvidia-pytriton) orders some sums differently
    np.testing.assert_allclose(got["scores"], ref.image_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["maps"], ref.anomaly_maps, rtol=1e-5, atol=1e-5 * float(np.abs(ref.anomaly_maps).max()))
    np.testing.assert_allclose(got["norm"], ref.normalized_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["labels"], ref.labels)
    np.testing.assert_allclose(remote["arrays"][f"{name}_float_scores"], ref.image_scores[:4], rtol=1e-5, atol=1e-6)


def test_a_bad_image_fails_its_own_request_and_the_server_goes_on(remote: dict) -> None:
    for key in ("patchcore_weave_http", "patchcore_weave_grpc", "padim_weave_http", "padim_weave_grpc"):
        errors = remote["errors"][key]
        assert [e is None for e in errors] == [True, True, False, True, True, True, True], key
        assert "not a recognised image file" in errors[2] and "\n" not in errors[2]


def test_a_client_that_leaves_out_the_map_does_not_get_it(remote: dict) -> None:
    assert remote["errors"]["patchcore_weave_float_outputs"] == ["image_score", "label"]


def test_infer_server_prints_the_same_lines_as_local_inference(served: Served, bundle: Path, dataset: Path,
                                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    files = [str(p) for p in list_test_images(dataset)[:4]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(Path(files[0]).read_bytes()[:100])
    local = CliRunner().invoke(app, ["infer", str(bundle), *files, str(bad), "-q"], catch_exceptions=False)
    proc = subprocess.run([str(served.python), "-m", "adx_cli", "infer", str(bundle), *files, str(bad), "-q",
                           "--server", f"http://127.0.0.1:{served.http}"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert local.exit_code == 3 and proc.returncode == 3, proc.stderr
    want = [json.loads(line) for line in local.stdout.splitlines()]
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in got] == [r["path"] for r in want] and [r.get("label") for r in got] == [
        r.get("label") for r in want]
    for g, w in zip(got[:-1], want[:-1]):
        assert set(g) == set(w) and g["image_score"] == pytest.approx(w["image_score"], rel=1e-5)
    assert "truncated or corrupt" in got[-1]["error"] and "truncated or corrupt" in want[-1]["error"]


def test_sigterm_stops_the_server_and_leaves_no_process(served: Served) -> None:
    """Runs last in this module: it stops the shared server."""
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    time.sleep(0.5)
    assert served.stdout[-1].startswith("adx serve: stopped (tritonserver exit status 0)")
    with pytest.raises(ProcessLookupError):
        os.killpg(served.proc.pid, 0)  # nothing of adx serve's process group is left
    assert served.workdir
    left = [cmd for cmd in _cmdlines() if any(served.workdir in a for a in cmd)]
    assert left == [], left  # neither tritonserver nor a Python-backend stub
    assert not Path(served.workdir).exists()
