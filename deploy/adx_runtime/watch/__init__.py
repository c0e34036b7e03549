"""``adx watch``: score images as they arrive, on the torch-free runtime.

A source (:mod:`.sources`) yields :class:`~.sources.Item` s, each with an identity and the time it
became available; the loop (:mod:`.loop`) micro-batches them through one
:class:`~adx_runtime.predictor.Predictor` and hands result records to sinks (:mod:`.sinks`); a
journal (:mod:`.journal`) remembers what was scored so a restart scores nothing twice. Nothing
between a source and a sink knows where an image came from, so a video or camera source and
webhook or MQTT sinks plug in beside the hot folder and the JSON-lines file. Video files, streams
and cameras (:mod:`.video`, PyAV) yield :class:`~.video.Frame` s through the same loop;
:mod:`.saving` writes the pictures of ``--save-anomalies``.
"""

from adx_runtime.watch.journal import Journal
from adx_runtime.watch.loop import WatchOptions, WatchStats, watch
from adx_runtime.watch.sinks import JsonLinesSink, Sink
from adx_runtime.watch.sources import HotFolder, Item
from adx_runtime.watch.video import Frame, LiveSource, SourceError, VideoFile, frame_source, parse_roi

__all__ = ["Frame", "HotFolder", "Item", "Journal", "JsonLinesSink", "LiveSource", "Sink", "SourceError",
           "VideoFile", "WatchOptions", "WatchStats", "frame_source", "parse_roi", "watch"]
