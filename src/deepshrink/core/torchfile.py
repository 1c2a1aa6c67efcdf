"""Reading ``torch.save`` files that come from elsewhere (checkpoints, ``--weights`` state dicts) as untrusted input.

:func:`load_torch_file` runs ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts: no class
is looked up, no code runs) only after the file has been checked to be a zip archive (torch's format since 1.6)
whose members, all stored uncompressed as ``torch.save`` writes them, add up to no more than the file itself:
allocation stays bounded by the file size. Anything wrong is a :class:`FormatError` naming the file, never an
exception from inside torch.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import FormatError

__all__ = ["MAX_MEMBERS", "load_torch_file", "state_dict_from"]

MAX_MEMBERS = 1 << 20
"""More members than this in one archive is refused before torch opens it."""


def _check_archive(path: Path, what: str) -> None:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise FormatError(f"{path}: not a readable {what} ({len(members)} archive members)")
            stated = 0
            for info in members:
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                    raise FormatError(f"{path}: not a readable {what} (archive member {info.filename!r} is "
                                      "compressed; torch.save stores members as they are)")
                stated += info.file_size
    except FormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, UnicodeDecodeError,
            NotImplementedError, OverflowError, KeyError, IndexError) as exc:
        raise FormatError(f"{path}: not a readable {what} (damaged zip archive: {exc})") from exc
    if stated > size:
        raise FormatError(f"{path}: not a readable {what} (its archive states {stated} bytes in a {size}-byte file)")


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` of a checked ``torch.save`` archive; FormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} not found: {path}")
    try:
        archive = zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, OverflowError) as exc:
        raise FormatError(f"{path}: not a readable {what} (damaged zip archive: {exc})") from exc
    if not archive:
        with path.open("rb") as handle:
            head = handle.read(2)
        if head == b"\x80\x02":  # a pickle protocol-2 stream: torch's legacy (pre-1.6) format
            raise FormatError(f"{path}: a {what} in torch's legacy format, which is not read (it can state tensor "
                              "sizes the file does not hold); load and re-save it with torch.save in torch >= 1.6")
        raise FormatError(f"{path}: not a readable {what} (not a torch.save zip archive)")
    _check_archive(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # untrusted bytes: whatever torch raises on them is a damaged file
        raise FormatError(f"{path}: not a readable {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def state_dict_from(value: Any, where: str) -> OrderedDict[str, torch.Tensor]:
    """``value`` checked to be a state dict (tensor name -> tensor), as a fresh ``OrderedDict``: its ``_metadata``
    (module versions, read by ``load_state_dict``) is kept only when it is a mapping of names to flat mappings."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise FormatError(f"{where}: expected a state dict (tensor name -> tensor)")
    state: OrderedDict[str, torch.Tensor] = OrderedDict(value.items())
    metadata = getattr(value, "_metadata", None)
    if isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, dict)
            and all(isinstance(a, str) and isinstance(b, int | bool | str | type(None)) for a, b in v.items())
            for k, v in metadata.items()):
        state._metadata = metadata  # type: ignore[attr-defined]
    return state
