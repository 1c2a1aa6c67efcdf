"""The one exception family of deepshrink: every user-facing failure is a ``DeepShrinkError``."""

from __future__ import annotations


class DeepShrinkError(Exception):
    """Base class of every error deepshrink raises on purpose."""


class ConfigError(DeepShrinkError, ValueError):
    """A configuration, recipe or argument is invalid (names the key and the allowed values)."""


class FormatError(DeepShrinkError, ValueError):
    """A file is corrupt, truncated, of an unknown version, or not the format it claims to be."""


class UnsupportedLayerError(DeepShrinkError, TypeError):
    """A technique was asked to act on a layer type it cannot handle."""


class DataError(DeepShrinkError, FileNotFoundError):
    """A dataset is missing or malformed (names the path and how to get it)."""
