"""``adx watch``: score images as they arrive, on the torch-free runtime.

A source (:mod:`.sources`) yields :class:`~.sources.Item` s, each with an identity and the time it
became available; the loop (:mod:`.loop`) micro-batches them through one
:class:`~adx_runtime.predictor.Predictor` and hands result records to sinks (:mod:`.sinks`); a
journal (:mod:`.journal`) remembers what was scored so a restart scores nothing twice. Nothing
between a source and a sink knows where an image came from, so a video or camera source and
webhook or MQTT sinks plug in beside the hot folder and the JSON-lines file.
"""

from adx_runtime.watch.journal import Journal
from adx_runtime.watch.loop import WatchOptions, WatchStats, watch
from adx_runtime.watch.sinks import JsonLinesSink, Sink
from adx_runtime.watch.sources import HotFolder, Item

__all__ = ["HotFolder", "Item", "Journal", "JsonLinesSink", "Sink", "WatchOptions", "WatchStats", "watch"]
