"""Errors that reach a user.

Every error the library raises on purpose derives from :class:`AdxError`. Its message is written
for the person at the terminal: what was wrong, what was received, what is valid, how to fix it.
The CLI prints the message without a traceback and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class AdxError(Exception):
    """Base class: the message is complete and user-facing."""


class ConfigError(AdxError):
    """An option or parameter has a value that cannot work."""


class DependencyError(AdxError):
    """A package the requested feature needs is missing or installed wrongly."""


class ImageDecodeError(AdxError):
    """One image file could not be decoded. Carries the path so a batch can report and go on."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(AdxError):
    """A dataset folder does not have the expected layout."""


class BundleError(AdxError):
    """A bundle is missing, malformed, tampered with, or from an unsupported schema version."""


class ProviderError(AdxError):
    """The requested execution provider or device is not available."""


class ExportError(AdxError):
    """Export failed (for example the parity check was above its tolerance)."""


class Interrupted(AdxError):
    """Long work stopped by Ctrl-C; the message says what was kept and how to go on."""
