"""``adx serve``: bundles on a real Triton Inference Server on this machine.

The server is the ``tritonserver`` binary that PyPI's ``nvidia-pytriton`` wheel ships (Linux x86_64,
CPU-only machines included). That build has Triton's Python backend and no onnxruntime backend, so
the served repository runs the ONNX graph inside a Python-backend model through the runtime's own
ONNX Runtime session (``graph_backend="python"``); ``adx export --format triton`` still writes the
graph for the onnxruntime backend of a full Triton container. The models point at the bundles as
given; each one verifies its bundle's checksums when it loads, and a bundle that fails is reported
while the others serve.

The Python-backend stub links the *system* ``libpython3.X``. Run from a virtual environment made
from another build of the same Python (pyenv's 3.11.7 against Debian's 3.11.2) it would load that
build's standard library into the system interpreter and fail at model load
(``'_thread.RLock' object has no attribute '_recursion_count'``). :func:`stub_environment` detects
this and runs the stub on the system Python with this environment's packages on its path (same
minor version, so the same extension ABI); where no such system Python exists it refuses with the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import adx_runtime
from adx_runtime.errors import AdxError, ConfigError, DependencyError
from adx_runtime.triton_repo import model_name, write_repository

RLOCK_TRAP = "'_thread.RLock' object has no attribute '_recursion_count'"


@dataclass
class TritonInstall:
    """Where nvidia-pytriton put Triton: the server binary, its backends, stubs and libraries."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def stub(self, version: str) -> Path:
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    def backends(self) -> list[str]:
        return sorted(p.name for p in (self.root / "backends").iterdir() if p.is_dir())


def find_triton() -> TritonInstall:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("adx serve needs Triton Inference Server from the PyPI package nvidia-pytriton "
                              "(Linux x86_64), which is not installed here: pip install 'adexport[serve]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    install = TritonInstall(root, root.parent.parent / "nvidia_pytriton.libs")
    if not install.binary.is_file():
        raise DependencyError(f"nvidia-pytriton is installed but has no tritonserver binary at {install.binary}; "
                              "reinstall it: pip install --force-reinstall 'nvidia-pytriton>=0.7'")
    return install


@dataclass
class StubPython:
    """The Python environment Triton's Python-backend stub will run the models in."""

    bin_dir: Path  # put first on PATH: the stub takes its prefix from the python3 it finds there
    note: str | None = None  # said at startup when it is not this interpreter's environment


def linked_libpython(stub: Path) -> tuple[str, Path | None]:
    """(``libpython3.X.so...`` name, resolved path or None) that the stub binary needs."""
    out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"(libpython\d+\.\d+[^\s]*)\s+=>\s+(\S+)", out)
    if not m:
        raise DependencyError(f"cannot tell which libpython Triton's Python-backend stub {stub} links (ldd says: "
                              f"{out.strip()[:200]!r})")
    return m.group(1), (None if m.group(2) == "not" else Path(m.group(2)))


def python_version_of(executable: Path) -> str:
    return subprocess.run([str(executable), "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()


def system_python_for(lib: Path, minor: str) -> Path:
    """The interpreter that owns a system ``libpython`` (``/usr/lib/...`` -> ``/usr/bin/python3.X``)."""
    return Path("/usr/local/bin" if "/usr/local/" in str(lib) else "/usr/bin") / f"python{minor}"


def stub_environment(install: TritonInstall, workdir: Path) -> StubPython:
    """Choose (or build) the environment the stub runs in; see the module docstring."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = install.stub(minor)
    if not stub.is_file():
        have = sorted(p.name for p in (install.root / "python_backend_stubs").iterdir())
        raise DependencyError(f"nvidia-pytriton has Python-backend stubs for Python {', '.join(have)}, not for this "
                              f"Python {minor}; use one of those Pythons for the serving environment")
    lib_name, lib = linked_libpython(stub)
    if lib is None:
        raise DependencyError(f"Triton's Python-backend stub needs {lib_name}, which this system lacks; install the "
                              f"system's shared Python {minor} library (Debian/Ubuntu: apt-get install libpython{minor})")
    system_python = system_python_for(lib, minor)
    here = f"{sys.version.split()[0]} ({sys.base_prefix})"
    if not system_python.is_file():
        raise DependencyError(
            f"Triton's Python-backend stub links {lib} but there is no {system_python} to match it, and this "
            f"environment runs Python {here}: model load would fail with {RLOCK_TRAP!r}. Fix: make the serving "
            f"venv from the Python that owns {lib_name}: pythonX -m venv .venv && .venv/bin/pip install "
            "'adexport[cpu,serve]'")
    system_version = python_version_of(system_python)
    if system_version == sys.version:
        return StubPython(Path(sys.prefix) / "bin")
    return StubPython(
        _bridge(system_python, workdir / "stub-python"),
        note=(f"this environment runs Python {here}, Triton's Python-backend stub links {lib} "
              f"(Python {system_version.split()[0]}, {system_python}): the models run on {system_python} with this "
              f"environment's packages (a venv made from {system_python} avoids this step)"))


def _bridge(system_python: Path, path: Path) -> Path:
    """A venv of the system Python whose site-packages reaches this environment's packages and adx_runtime."""
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(path)], check=True, timeout=120,
                   capture_output=True)
    dirs = [*site.getsitepackages(), str(Path(adx_runtime.__file__).parent.parent)]
    purelib = next(path.glob("lib/python*/site-packages"))
    # addsitedir (not a bare path line) so the editable-install .pth files in those folders work too.
    (purelib / "adx_parent_env.pth").write_text(
        f"import site; list(map(site.addsitedir, {dirs!r}))\n", encoding="utf-8")
    return path / "bin"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_batch: int = 16
    delay_us: int = 0
    instances: int = 1
    threads: int = 0
    startup_timeout: float = 180.0
    verbose: bool = False


@dataclass
class ServedModel:
    bundle: str
    name: str | None = None  # the float-input ensemble; NAME_image takes encoded bytes
    version: int | None = None
    error: str | None = None
    models: list[str] = field(default_factory=list)  # every model written for it (a tiled bundle: no NAME)


@dataclass
class Server:
    """A started ``tritonserver`` process and what it serves (see :func:`start`)."""

    process: subprocess.Popen
    workdir: Path
    options: ServeOptions
    models: list[ServedModel]
    version: str = "?"
    notes: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{self.options.host}:{self.options.http_port}"

    def startup_line(self) -> str:
        ready = [f"{m.name} (v{m.version}; bytes: {m.name}_image)" if m.name in m.models or not m.models
                 else f"{m.name}_image (v{m.version}; tiled, encoded images only)" for m in self.models if m.error is None]
        failed = [m.bundle for m in self.models if m.error is not None]
        line = (f"adx serve: Triton {self.version} listening on {self.http_url} (HTTP) and "
                f"{self.options.host}:{self.options.grpc_port} (gRPC); ready: {', '.join(ready) or 'none'}")
        return line + (f"; failed: {', '.join(failed)}" if failed else "")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL after ``timeout``; also reaps any stub
        left in the server's process group, and removes the work folder."""
        code = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait(10)
        else:
            code = self.process.returncode
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def log_tail(self, n: int = 15) -> str:
        log = self.workdir / "tritonserver.log"
        return "\n".join(log.read_text("utf-8", "replace").splitlines()[-n:]) if log.is_file() else ""


def _http(url: str, data: bytes | None = None, timeout: float = 2.0) -> object:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def start(bundles: Sequence[str | Path], options: ServeOptions, say: Callable[[str], None] = lambda s: None) -> Server:
    """Verify the bundles, write a serving repository, start ``tritonserver`` and wait until it answers."""
    if not bundles:
        raise ConfigError("adx serve needs at least one bundle folder")
    if options.max_batch < 1 or options.instances < 1 or options.delay_us < 0:
        raise ConfigError(f"--max-batch and --instances must be >= 1 and --max-queue-delay-us >= 0; got "
                          f"{options.max_batch}, {options.instances}, {options.delay_us}")
    install = find_triton()
    workdir = Path(tempfile.mkdtemp(prefix="adx-serve-"))
    try:
        stub_env = stub_environment(install, workdir)
        models = _prepare(bundles, workdir / "repo", options, say)
        if not any(m.error is None for m in models):
            raise ConfigError("none of the bundles can be served: " + "; ".join(f"{m.bundle}: {m.error}" for m in models))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server = _launch(install, stub_env, workdir, workdir / "repo", options, models)
    try:
        _collect_states(server)
        if not any(m.error is None for m in server.models):
            raise AdxError("no bundle could be served: " + "; ".join(f"{m.bundle}: {m.error}" for m in server.models))
    except BaseException:
        server.stop()
        raise
    return server


def start_repository(repo: str | Path, options: ServeOptions) -> Server:
    """Start ``tritonserver`` on an existing model repository (one ``adx export --format triton`` wrote);
    the caller reads each model's state with :func:`repository_index` and stops the server."""
    install = find_triton()
    workdir = Path(tempfile.mkdtemp(prefix="adx-serve-"))
    try:
        stub_env = stub_environment(install, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return _launch(install, stub_env, workdir, Path(repo), options, [])


def repository_index(server: Server) -> list[dict]:
    """Triton's repository index: each model version's name, version, state and reason."""
    index = _http(f"{server.http_url}/v2/repository/index", data=b"{}", timeout=10.0)
    return [m for m in index or [] if isinstance(m, dict)]


def _launch(install: TritonInstall, stub_env: StubPython, workdir: Path, repo: Path, options: ServeOptions,
            models: list[ServedModel]) -> Server:
    try:
        backends = _backends(install, workdir / "backends")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(install.libs)) if p)
    env["PATH"] = f"{stub_env.bin_dir}:{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # FAISS's OpenMP threads would spin against ONNX Runtime's
    cmd = [str(install.binary), f"--model-repository={repo}", f"--backend-directory={backends}",
           f"--http-address={options.host}", f"--http-port={options.http_port}",
           f"--grpc-address={options.host}", f"--grpc-port={options.grpc_port}",
           "--allow-metrics=false", "--exit-on-error=false", "--strict-readiness=false",
           "--model-control-mode=none", "--exit-timeout-secs=20", "--log-verbose=0"]
    log = None if options.verbose else open(workdir / "tritonserver.log", "wb")
    # Its own session, so a terminal's Ctrl-C reaches adx serve, which stops it in order; and the parent-death
    # signal, so it goes down with adx serve even when adx serve is killed outright.
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                               stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    if log is not None:
        log.close()
    server = Server(process, workdir, options, models, notes=[stub_env.note] if stub_env.note else [])
    try:
        _wait_until_live(server)
    except BaseException:
        server.stop()
        raise
    return server


def _die_with_parent() -> None:
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _prepare(bundles: Sequence[str | Path], repo: Path, options: ServeOptions,
             say: Callable[[str], None]) -> list[ServedModel]:
    models: list[ServedModel] = []
    used: set[str] = set()
    for bundle in bundles:
        served = ServedModel(str(bundle))
        try:
            from adx_runtime.bundle import load_manifest  # noqa: PLC0415

            name = model_name(load_manifest(bundle, verify=False))
            if name in used:
                name = f"{name}_{re.sub(r'[^A-Za-z0-9_-]', '_', Path(bundle).resolve().name)}"
            entry = write_repository(bundle, repo, name=name, graph_backend="python", copy_bundle=False,
                                     max_batch=options.max_batch, delay_us=options.delay_us,
                                     instances=options.instances, threads=options.threads)
            served.name, served.version, served.models = entry.name, entry.version, entry.models
            used.add(name)
        except AdxError as exc:
            served.error = str(exc)
            say(f"error: bundle {bundle} is not served: {exc}")
        models.append(served)
    return models


def _backends(install: TritonInstall, dst: Path) -> Path:
    """The server's backend folder, with the Python-backend stub for this Python version in place (the
    wheel keeps one stub per version aside)."""
    python = dst / "python"
    python.mkdir(parents=True)
    for f in (install.root / "backends" / "python").iterdir():
        if f.is_file():
            (python / f.name).symlink_to(f)
    shutil.copy2(install.stub(f"{sys.version_info.major}.{sys.version_info.minor}"),
                 python / "triton_python_backend_stub")
    return dst


def _wait_until_live(server: Server) -> None:
    deadline = time.monotonic() + server.options.startup_timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AdxError(f"tritonserver exited with status {server.process.returncode} while starting "
                           f"(ports {server.options.http_port}/{server.options.grpc_port} in use?); its log ends: "
                           + server.log_tail(6).replace("\n", " | "))
        try:
            meta = _http(f"{server.http_url}/v2", timeout=1.0)
            server.version = str(meta.get("version", "?")) if isinstance(meta, dict) else "?"
            return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.3)
    raise AdxError(f"tritonserver did not answer on {server.http_url} within {server.options.startup_timeout:g} s; "
                   "raise --startup-timeout, or look at the server log with --verbose")


def _collect_states(server: Server) -> None:
    """Mark each bundle ready or failed from the server's repository index (the reason Triton gives)."""
    states = {(m.get("name"), str(m.get("version", ""))): m for m in repository_index(server)}
    by_name: dict[str, list[dict]] = {}
    for (name, _), m in states.items():
        by_name.setdefault(str(name), []).append(m)
    for served in server.models:
        if served.error is not None:
            continue
        parts = served.models or [served.name, f"{served.name}_image", f"{served.name}_graph",
                                  f"{served.name}_score", f"{served.name}_decode"]
        bad = [(p, m) for p in parts for m in by_name.get(str(p), [{"state": "MISSING"}]) if m.get("state") != "READY"]
        if bad:
            part, m = bad[0]
            reason = str(m.get("reason") or "").strip() or _log_error(server, str(part)) or "no reason given"
            reason = reason.replace("\\n", "\n").split("\n")[0].strip()  # one line: Triton appends the traceback
            served.error = f"{part} is {m.get('state') or 'not loaded'}: {reason}"


def _log_error(server: Server, model: str) -> str | None:
    """The first error line of the server's log that names ``model`` (a config Triton could not parse)."""
    for line in server.log_tail(400).splitlines():
        if line.startswith("E") and f"'{model}'" in line:
            return line.split("] ", 1)[-1].strip().strip('"')
    return None


def serve(bundles: Sequence[str | Path], options: ServeOptions, say: Callable[[str], None]) -> int:
    """Start, print the startup line, serve until SIGTERM or Ctrl-C, stop cleanly. Returns the exit status."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = start(bundles, options, say)
        try:
            for note in server.notes:
                say(f"note: {note}")
            for m in server.models:
                if m.error is not None and m.name is not None:
                    say(f"error: bundle {m.bundle} is not served: {m.error}")
            say(server.startup_line())
            while not stopping and server.process.poll() is None:
                time.sleep(0.2)
            if not stopping:
                raise AdxError(f"tritonserver stopped by itself with status {server.process.returncode}; its log "
                               "ends: " + server.log_tail(6).replace("\n", " | "))
        finally:
            code = server.stop()
        say(f"adx serve: stopped (tritonserver exit status {code})")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
