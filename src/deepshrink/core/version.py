"""The package version and the ``.dsz`` magic: a leaf module, so readers and writers import them without cycles."""

__version__ = "0.1.0"

DSZ_MAGIC = b"\x89DSZ\r\n\x1a\n"
"""First eight bytes of every ``.dsz`` file (PNG-style: catches text-mode and truncation damage)."""
