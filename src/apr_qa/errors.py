"""Error types. Every error the CLI reports is one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class AprQaError(Exception):
    """Base class: a user-facing, one-line error."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        text = " ".join(str(message).split())  # keep it on one line
        super().__init__(f"{self.path}: {text}" if self.path is not None else text)


class FormatError(AprQaError):
    """A file is not what it claims to be (bad magic, CRC, offsets, unknown dtype...)."""


class UnsupportedError(AprQaError):
    """A valid input that this tool does not handle (architecture, dtype, layout...)."""


class SecurityError(AprQaError):
    """An unsafe input was refused (pickle without explicit opt-in)."""


class GateFailure(AprQaError):
    """A quality gate of level fail or halt tripped."""

    def __init__(self, message: str, level: str, path: str | Path | None = None):
        self.level = level
        super().__init__(message, path)
