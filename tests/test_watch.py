"""``adx watch`` on a hot folder: real files, real writers, real ``adx`` processes killed and restarted.

Every wait is bounded: a watcher runs with --max-images or --max-seconds, and the test gives up
after a deadline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import list_test_images

pytest.importorskip("watchdog")

from adx_runtime.predictor import Predictor  # noqa: E402
from adx_runtime.watch import JsonLinesSink, WatchOptions, watch  # noqa: E402
from adx_runtime.watch.journal import read_jsonl  # noqa: E402
from adx_runtime.watch.sources import eligible_name  # noqa: E402
from polling import wait_for as _wait  # noqa: E402


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.load(bundle)


@pytest.fixture(scope="module")
def images(dataset: Path) -> list[Path]:
    return list_test_images(dataset)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _slow_write(src: Path, dst: Path, chunks: int, pause: float) -> None:
    """A camera writing a large file slowly: one open, chunks flushed with pauses, one close."""
    data = src.read_bytes()
    step = -(-len(data) // chunks)
    with open(dst, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause)


def _adx(*args: str, stderr: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adx_cli", "watch", *args], stdout=subprocess.DEVNULL,
                            stderr=open(stderr, "w"))


def test_only_complete_image_names_count() -> None:
    assert eligible_name("a.png") and eligible_name("B.JPG")
    for name in (".a.png", "~a.png", "a.png.tmp", "a.png.part", "a.txt", "journal.jsonl"):
        assert not eligible_name(name)


def test_events_slow_writer_rename_and_corrupt_with_move(bundle: Path, images: list[Path], predictor: Predictor,
                                                         tmp_path: Path) -> None:
    """File events: a slow writer pausing longer than --settle-ms is scored once, after its close; a
    temp-then-rename writer once, after the rename; a corrupt file gets an error record and goes to
    failed/; the scores are those of the runtime's own scoring path."""
    folder, out, err = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "err.txt"
    folder.mkdir()
    proc = _adx(str(bundle), str(folder), "-o", str(out), "--move", "--max-images", "3", "--settle-ms", "200",
                "--max-seconds", "30", stderr=err)
    try:
        _wait(lambda: "watching" in err.read_text(), 20, "the start line")
        _slow_write(images[0], folder / "slow.png", chunks=4, pause=0.35)  # pauses > settle: close decides
        (folder / "renamed.png.part").write_bytes(images[1].read_bytes())
        os.rename(folder / "renamed.png.part", folder / "renamed.png")
        (folder / "corrupt.png").write_bytes(images[2].read_bytes()[:200])
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        proc.kill()
    rows = {Path(r["path"]).name: r for r in _lines(out)}
    assert sorted(rows) == ["corrupt.png", "renamed.png", "slow.png"]
    assert "error" in rows["corrupt.png"] and "image_score" not in rows["corrupt.png"]
    expected = {res.path: res for res in predictor.predict_files([images[0], images[1]])}
    for name, src in (("slow.png", images[0]), ("renamed.png", images[1])):
        row = rows[name]
        assert row["image_score"] == pytest.approx(expected[str(src)].image_score, rel=1e-5)
        assert row["label"] in ("normal", "anomalous") and row["source"] == str(folder)
        assert row["latency_ms"] >= 0 and row["timestamp"].endswith("+00:00")
        assert (folder / "done" / name).exists() and row["moved_to"] == str(folder / "done" / name)
    assert (folder / "failed" / "corrupt.png").exists()
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == []
    assert "watching" in err.read_text() and "3 images" in err.read_text()


def test_polling_waits_for_a_stable_size(predictor: Predictor, images: list[Path], tmp_path: Path) -> None:
    """--poll: a file written in chunks with pauses shorter than --settle-ms is scored once, whole."""
    folder, out = tmp_path / "in", tmp_path / "out.jsonl"
    folder.mkdir()
    opts = WatchOptions(poll=True, settle_ms=600, max_images=1, max_seconds=15, journal_dir=tmp_path / "j")
    writer = threading.Thread(target=_slow_write, args=(images[0], folder / "a.png", 5, 0.1))
    writer.start()
    stats = watch(predictor, folder, [JsonLinesSink(out)], opts)
    writer.join()
    rows = _lines(out)
    assert stats.images == 1 and stats.errors == 0 and len(rows) == 1 and "image_score" in rows[0]


def test_many_files_at_once_in_batches(predictor: Predictor, images: list[Path], tmp_path: Path) -> None:
    """200 files arriving together (renamed in): each scored once, in micro-batches, none lost;
    a lone late file is not held back longer than --max-delay-ms allows."""
    folder, stage, out = tmp_path / "in", tmp_path / "stage", tmp_path / "out.jsonl"
    folder.mkdir()
    stage.mkdir()
    for i in range(201):
        shutil.copyfile(images[i % len(images)], stage / f"{i:04d}.png")
    opts = WatchOptions(max_batch=16, max_delay_ms=20, max_images=201, max_seconds=30, journal_dir=tmp_path / "j",
                        settle_ms=5000)  # events, not the settle rule, must make them ready
    done = threading.Event()
    result: list = []
    t = threading.Thread(target=lambda: (result.append(watch(predictor, folder, [JsonLinesSink(out)], opts)),
                                         done.set()))
    t.start()
    time.sleep(0.5)
    for i in range(200):
        os.rename(stage / f"{i:04d}.png", folder / f"{i:04d}.png")
    _wait(lambda: len(_lines(out)) >= 200, 20, "200 records")
    time.sleep(0.2)
    os.rename(stage / "0200.png", folder / "0200.png")
    t.join(timeout=20)
    assert done.is_set()
    rows = _lines(out)
    assert sorted(Path(r["path"]).name for r in rows) == [f"{i:04d}.png" for i in range(201)]
    assert result[0].images == 201 and result[0].errors == 0
    assert rows[-1]["latency_ms"] < 1000  # the lone file: max delay, not a full batch's wait
    assert len(read_jsonl(tmp_path / "j" / "journal.jsonl")) == 201


def test_restart_reconciles_output_and_journal(predictor: Predictor, images: list[Path], tmp_path: Path) -> None:
    """A crash after the record was written but before its journal entry: the restart journals it
    from the output (not scored twice); a torn last output line is cut and that file scored again."""
    folder, out, jdir = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "j"
    folder.mkdir()
    for i in range(3):
        shutil.copyfile(images[i], folder / f"{i}.png")
    opts = WatchOptions(settle_ms=0, max_images=3, max_seconds=15, journal_dir=jdir)
    watch(predictor, folder, [JsonLinesSink(out)], opts)
    lines = out.read_text().splitlines(keepends=True)
    # Simulate the crash windows: journal lost its last two entries, output's last line torn.
    journal_lines = (jdir / "journal.jsonl").read_text().splitlines(keepends=True)
    order = [Path(json.loads(line)["path"]).name for line in lines]
    (jdir / "journal.jsonl").write_text("".join(x for x in journal_lines if json.loads(x)["name"] == order[0])
                                        + '{"name": "torn')
    out.write_text("".join(lines[:2]) + lines[2][:30])
    opts = WatchOptions(settle_ms=0, max_images=1, max_seconds=15, journal_dir=jdir)
    notes: list[str] = []
    stats = watch(predictor, folder, [JsonLinesSink(out)], opts, log=notes.append)
    assert stats.images == 1
    assert sorted(Path(r["path"]).name for r in _lines(out)) == ["0.png", "1.png", "2.png"]
    assert any("journaled them now" in n for n in notes)
    assert {r["name"] for r in read_jsonl(jdir / "journal.jsonl")} == {"0.png", "1.png", "2.png"}


def test_kill_9_then_restart_scores_each_file_once_and_sigterm_exits_0(bundle: Path, images: list[Path],
                                                                       tmp_path: Path) -> None:
    folder, out, jdir = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "j"
    folder.mkdir()
    names = [f"{i:04d}.png" for i in range(200)]
    for i, name in enumerate(names):
        shutil.copyfile(images[i % len(images)], folder / name)
    common = [str(bundle), str(folder), "-o", str(out), "--out", str(jdir), "--settle-ms", "0", "--max-batch", "2",
              "--max-seconds", "40"]
    proc = _adx(*common, stderr=tmp_path / "err1.txt")
    try:
        _wait(lambda: len(_lines(out)) >= 6, 30, "the first records")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
    first = len(_lines(out))
    print(f"killed after {first} of {len(names)} records")
    assert 0 < first < len(names), "kill -9 came after the last image; the test needs it in the middle"
    for i in range(200, 210):  # arrived while the watcher was down
        names.append(f"{i:04d}.png")
        shutil.copyfile(images[i % len(images)], folder / names[-1])
    err = tmp_path / "err2.txt"
    proc = _adx(*common, stderr=err)
    try:
        _wait(lambda: len(_lines(out)) >= len(names), 30, "every record after the restart")
        time.sleep(0.3)  # a duplicate, were one coming, would land now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        proc.kill()
    rows = _lines(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(names)  # every file exactly once
    journal = {r["name"] for r in read_jsonl(jdir / "journal.jsonl")}
    assert journal == set(names)  # the journal and the output agree
    assert "(stopped)" in err.read_text()


def test_without_watchdog_it_polls_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adx_runtime.watch import HotFolder

    monkeypatch.setitem(sys.modules, "watchdog.events", None)  # import fails as if not installed
    notes: list[str] = []
    source = HotFolder(tmp_path, log=notes.append)
    source.start()
    assert source.mode == "polling" and len(notes) == 1 and "pip install 'adexport[watch]'" in notes[0]


def test_watch_help_and_no_torch() -> None:
    from typer.testing import CliRunner

    from adx_cli.app import app

    result = CliRunner().invoke(app, ["watch", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--max-delay-ms" in result.output and "--move" in result.output
    proc = subprocess.run([sys.executable, "-c", "import sys, adx_runtime.watch.loop; "
                           "assert not any(m.split('.')[0] == 'torch' for m in sys.modules)"], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_output_to_dev_null_is_not_fsynced(tmp_path: Path) -> None:
    """--output /dev/null (or a pipe) cannot be fsynced; the sink writes to it without an error."""
    from adx_runtime.watch import JsonLinesSink

    sink = JsonLinesSink("/dev/null")
    sink.open()
    sink.write([{"path": "a.png", "image_score": 1.0}])
    sink.close()
