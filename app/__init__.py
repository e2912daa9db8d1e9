"""matdesign service: the HTTP surface, persistence and CLI around the scientific core."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matdesign")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+local"
