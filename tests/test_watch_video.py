"""``adx watch`` on video: a clip written by PyAV in the test (lossless FFV1, so every decoded frame
is the exact picture encoded and its score must equal the image's own), a live source slower to
score than to produce, a source that never opens, ``--roi`` and ``--save-anomalies``.

Every wait is bounded: watchers run with --max-seconds or to a file's end, and live sources stop."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import list_test_images

av = pytest.importorskip("av")

from adx_runtime.errors import ConfigError  # noqa: E402
from adx_runtime.predictor import Predictor  # noqa: E402
from adx_runtime.watch import (JsonLinesSink, LiveSource, SourceError, WatchOptions, frame_source,  # noqa: E402
                               parse_roi, watch)

N_FRAMES = 30
FPS = 30


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor.load(bundle)


@pytest.fixture(scope="module")
def pictures(dataset: Path, predictor: Predictor) -> dict[str, Any]:
    """The clip's frames: good test images, with the test image the bundle scores highest (an
    anomaly) at frames 7 and 19; and each frame's own score, from the image itself."""
    images = list_test_images(dataset)
    arrays = {p: np.asarray(Image.open(p).convert("RGB")) for p in images}
    scores = {p: r.image_score for p, r in zip(images, predictor.predict_files([str(p) for p in images]))}
    worst = max(images, key=lambda p: scores[p])
    good = [p for p in images if p.parent.name == "good"]
    order = [worst if i in (7, 19) else good[i % len(good)] for i in range(N_FRAMES)]
    return {"frames": [arrays[p] for p in order], "scores": [scores[p] for p in order], "worst": worst}


def write_clip(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """A lossless clip (FFV1, RGB) through PyAV: decoding gives back exactly these pixels."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(pictures: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mkv", pictures["frames"])


def run(predictor: Predictor, source: Any, **opts: Any) -> tuple[list[dict[str, Any]], Any, list[str]]:
    buf, lines = io.StringIO(), []
    stats = watch(predictor, source, [JsonLinesSink("-", stream=buf)], WatchOptions(**opts), log=lines.append)
    return [json.loads(line) for line in buf.getvalue().splitlines()], stats, lines


def test_every_frame_of_a_file_is_scored_in_order(predictor: Predictor, clip: Path,
                                                 pictures: dict[str, Any]) -> None:
    rows, stats, lines = run(predictor, str(clip), max_batch=4)
    assert [r["frame"] for r in rows] == list(range(N_FRAMES))
    assert stats.images == N_FRAMES and stats.dropped == 0 and stats.errors == 0
    # Lossless: each frame scores exactly as its image does.
    assert [r["image_score"] for r in rows] == pytest.approx(pictures["scores"], abs=1e-6)
    flagged = [r["frame"] for r in rows if r["label"] == "anomalous"]
    assert 7 in flagged and 19 in flagged
    assert stats.anomalies == len(flagged)
    # Matroska keeps times in milliseconds.
    assert [r["pts_s"] for r in rows] == pytest.approx([i / FPS for i in range(N_FRAMES)], abs=1e-3)
    row = rows[0]
    assert row["source"] == row["path"] == str(clip) and row["latency_ms"] >= 0 and "dropped" not in row
    assert row["timestamp"].endswith("+00:00")
    assert lines[0].startswith(f"watching video file {clip} (every frame, in order)")
    assert lines[-1].endswith("(end of file)")


def test_every_nth_frame(predictor: Predictor, clip: Path, pictures: dict[str, Any]) -> None:
    rows, stats, _ = run(predictor, str(clip), max_batch=8, every=3)
    assert [r["frame"] for r in rows] == list(range(0, N_FRAMES, 3))
    assert [r["image_score"] for r in rows] == pytest.approx(pictures["scores"][::3], abs=1e-6)
    assert stats.images == 10


def test_roi_cuts_each_frame_before_preprocessing(predictor: Predictor, clip: Path,
                                                  pictures: dict[str, Any]) -> None:
    rows, _, lines = run(predictor, str(clip), max_batch=8, roi=(8, 4, 40, 48), max_images=5)
    expected = predictor.predict([np.ascontiguousarray(f[4:52, 8:48]) for f in pictures["frames"][:5]]).image_scores
    assert [r["image_score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    assert "region 8,4,40,48 of each frame" in lines[0]


def test_roi_outside_the_frame_is_one_line_error(predictor: Predictor, clip: Path) -> None:
    with pytest.raises(SourceError, match=r"--roi 40,0,30,30 reaches to \(70, 30\), outside the 64x64 picture") as e:
        run(predictor, str(clip), roi=(40, 0, 30, 30))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,0,5", "-1,0,5,5"])
def test_bad_roi_text_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--roi"):
        parse_roi(text)


def test_roi_on_a_folder_reports_images_it_does_not_fit(predictor: Predictor, pictures: dict[str, Any],
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(pictures["frames"][0]).save(folder / "a.png")  # 64x64: fits
    Image.fromarray(pictures["frames"][0][:20, :20]).save(folder / "b.png")  # 20x20: does not
    rows, stats, _ = run(predictor, folder, roi=(8, 8, 32, 32), settle_ms=0, max_images=2, max_seconds=20,
                         journal_dir=None)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["a.png"]["image_score"] == pytest.approx(
        float(predictor.predict([np.ascontiguousarray(pictures["frames"][0][8:40, 8:40])]).image_scores[0]), abs=1e-6)
    assert "outside the 20x20 picture" in by_name["b.png"]["error"] and stats.errors == 1


def _paced(frames: list[np.ndarray], fps: float, stop: threading.Event) -> Iterator[tuple[np.ndarray, float]]:
    """An in-process camera: ``frames`` over and over at ``fps``, until ``stop``."""
    t0, i = time.monotonic(), 0
    while not stop.is_set() and i < 100_000:
        wait = t0 + i / fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield frames[i % len(frames)], i / fps
        i += 1


class SlowPredictor:
    """The real predictor, plus a fixed pause per batch: a scorer slower than the camera."""

    def __init__(self, inner: Predictor, pause_s: float):
        self._inner, self._pause = inner, pause_s

    def predict(self, images: Any) -> Any:
        time.sleep(self._pause)
        return self._inner.predict(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_live_source_slower_scorer_drops_frames_with_a_bounded_buffer(predictor: Predictor,
                                                                      pictures: dict[str, Any]) -> None:
    stop_camera = threading.Event()
    source = LiveSource(lambda: _paced(pictures["frames"], FPS, stop_camera), "camera-in-test", capacity=2)
    try:
        rows, stats, lines = run(SlowPredictor(predictor, 0.2), source, max_batch=2, max_seconds=2.0,
                                 max_delay_ms=10)
    finally:
        stop_camera.set()
    # 30 FPS produced, about 10 frames/s scored (2 per 0.2 s): most are dropped, never queued.
    assert source.max_buffered <= 2
    assert source.dropped > 10 and stats.dropped == source.dropped
    assert 4 <= stats.images <= 24
    frames = [r["frame"] for r in rows]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert frames[-1] - frames[0] + 1 > len(frames)  # gaps: the dropped frames
    drops = [r["dropped"] for r in rows]
    assert drops == sorted(drops) and drops[-1] > 0
    # Every frame read is scored, dropped or (at stop) still in the buffer: none is lost unaccounted.
    assert source.read - (stats.images + source.dropped) <= 2 + 1
    # Latest frame wins: a scored frame is never older than the buffer plus one batch of scoring.
    assert max(r["latency_ms"] for r in rows) < 1500
    assert ", 0 errors, " in lines[-1] and "dropped" in lines[-1]


def test_a_source_that_never_opens_is_one_error(predictor: Predictor) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=rf"cannot open http://127.0.0.1:{port}/x: .*\(2 tries in") as e:
        run(predictor, f"http://127.0.0.1:{port}/x", open_tries=2, max_seconds=30)
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(e.value)


def test_unreadable_file_and_unknown_source_are_one_line_errors(predictor: Predictor, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match="cannot open video file"):
        run(predictor, str(junk))
    with pytest.raises(ConfigError, match="neither a folder, a video file, a URL"):
        frame_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError, match="scheme 'ftp'"):
        frame_source("ftp://user:secret@host/x")


def test_credentials_in_a_url_are_never_printed() -> None:
    src = frame_source("rtsp://admin:hunter2@10.0.0.9:554/stream1")
    assert src.name == "rtsp://admin:***@10.0.0.9:554/stream1" and "hunter2" not in src.describe()


def test_save_anomalies_and_every_nth_normal_frame(predictor: Predictor, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "saved"
    rows, _, lines = run(predictor, str(clip), max_batch=4, save_dir=out, save_normal_every=10)
    saved = {r["frame"]: r["saved"] for r in rows if "saved" in r}
    anomalous = {r["frame"] for r in rows if r["label"] == "anomalous"}
    normal = [r["frame"] for r in rows if r["label"] == "normal"]
    assert anomalous <= set(saved)
    assert set(saved) - anomalous == set(normal[9::10])  # the 10th, 20th, ... normal frame
    assert sorted(os.listdir(out)) == sorted(Path(p).name for p in saved.values())
    for frame, path in saved.items():
        kind = "anomalous" if frame in anomalous else "normal"
        assert Path(path).name.endswith(f"_{kind}_clip_{frame:08d}.jpg")
        with Image.open(path) as img:
            assert img.size == (64, 64) and img.format == "JPEG"
    assert f"anomalous pictures with heatmaps to {out}" in lines[0]


def test_save_anomalies_from_a_folder(predictor: Predictor, pictures: dict[str, Any], tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "saved"
    folder.mkdir()
    (folder / "part1.png").write_bytes(pictures["worst"].read_bytes())
    rows, _, _ = run(predictor, folder, settle_ms=0, max_images=1, max_seconds=20, journal_dir=None, save_dir=out,
                     move=True)
    (row,) = rows
    assert row["label"] == "anomalous" and Path(row["saved"]).parent == out
    assert Path(row["saved"]).name.endswith("_anomalous_part1.jpg")
    with Image.open(row["saved"]) as img:  # saved before --move took the file away
        assert img.size == Image.open(pictures["worst"]).size
    assert (folder / "done" / "part1.png").exists()


def test_save_normal_every_needs_a_folder() -> None:
    with pytest.raises(ConfigError, match="--save-normal-every needs --save-anomalies"):
        WatchOptions(save_normal_every=3).check()


def test_cli_scores_a_clip_and_refuses_a_missing_source(bundle: Path, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "adx_cli", "watch", str(bundle), str(clip), "-o", str(out),
                           "--every", "2", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == list(range(0, N_FRAMES, 2))
    bad = subprocess.run([sys.executable, "-m", "adx_cli", "watch", str(bundle), str(tmp_path / "nope.mp4")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "neither a folder, a video file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_without_pyav_a_video_source_names_the_extra(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    from adx_runtime.errors import DependencyError

    monkeypatch.setitem(sys.modules, "av", None)  # what an install without the video extra sees
    with pytest.raises(DependencyError, match=r"pip install 'adexport\[video\]'"):
        frame_source(str(clip))


def test_a_file_damaged_part_way_scores_what_came_before_then_fails(predictor: Predictor,
                                                                    pictures: dict[str, Any]) -> None:
    from adx_runtime.watch import VideoFile

    def damaged() -> Iterator[tuple[np.ndarray, float]]:  # what a decoder gives for a file cut short
        for i in range(5):
            yield pictures["frames"][i], i / FPS
        raise OSError("Invalid data found when processing input")

    buf = io.StringIO()
    with pytest.raises(SourceError, match=r"damaged.mkv: decoding stopped after frame 4: Invalid data"):
        watch(predictor, VideoFile(damaged, "damaged.mkv", capacity=8), [JsonLinesSink("-", stream=buf)],
              WatchOptions(max_batch=8))
    assert [json.loads(line)["frame"] for line in buf.getvalue().splitlines()] == [0, 1, 2, 3, 4]


def test_realtime_plays_a_file_as_a_camera(predictor: Predictor, clip: Path) -> None:
    """--realtime: the clip at its own 30 FPS through the live source; a scorer at about 10 frames/s
    drops the rest, and the file's end ends the watch."""
    source = frame_source(str(clip), realtime=True, capacity=1)
    assert isinstance(source, LiveSource)
    t0 = time.monotonic()
    rows, stats, lines = run(SlowPredictor(predictor, 0.1), source, max_batch=1, max_seconds=30)
    assert 0.9 < time.monotonic() - t0 < 10  # about the clip's second, not the 30 s limit
    assert source.read == N_FRAMES and stats.images + source.dropped == N_FRAMES
    assert source.dropped > 5 and rows[-1]["dropped"] <= source.dropped
    assert lines[-1].endswith("(end of file)") and f", {source.dropped} dropped;" in lines[-1]
