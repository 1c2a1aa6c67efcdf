"""Fixtures of the codec tests (the transforms and helpers live in codec_helpers.py)."""

from .codec_helpers import make_model, transforms

__all__ = ["make_model", "transforms"]
