"""Bounds on what a hostile input file can make raylab build: JSON nesting, file and ZIP member sizes.

Annotation files, evaluation documents and tool exports come from outside. The readers here refuse,
with a message, before building anything large: a JSON document nested deeper than the parser's
recursion allows, a file larger than `MAX_INPUT_BYTES`, and a ZIP member that decompresses past
`MAX_INPUT_BYTES` (a 400 KB ZIP can hold 400 MB of XML). The restricted unpickler's bounds are in
safe_pickle.py.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

# an annotation file, or a ZIP member once decompressed: a CVAT export of ~400,000 boxes; parsing that
# much XML takes ~5x its size in memory
MAX_INPUT_BYTES = 64 * 2**20


class InputBoundError(ValueError):
    """An input file beyond one of the bounds above; the message says which and by how much."""


def loads_json(text: str | bytes):
    """json.loads, with a document nested deeper than the parser's recursion allows (about 1,000 levels;
    raylab's documents nest fewer than 10) refused with a message instead of a RecursionError.

    Raises:
        InputBoundError: nested too deeply.
        json.JSONDecodeError: not JSON (both are ValueErrors).
    """
    try:
        return json.loads(text)
    except RecursionError:  # the C scanner counts its depth against the interpreter's recursion limit
        raise InputBoundError(f"JSON nested more than about {sys.getrecursionlimit()} levels deep") from None


def read_bytes(path: Path, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a file no larger than `limit` (checked before reading)."""
    size = Path(path).stat().st_size
    if size > limit:
        raise InputBoundError(f"the file has {size / 2**20:.0f} MiB; raylab reads at most "
                              f"{limit / 2**20:.0f} MiB")
    return Path(path).read_bytes()


def read_zip_member(z: zipfile.ZipFile, name: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The decompressed bytes of one ZIP member no larger than `limit`. The size the member declares is
    checked before decompressing; zipfile never decompresses past it (a member that declares less than
    it holds fails its CRC check: zipfile.BadZipFile)."""
    declared = z.getinfo(name).file_size
    if declared > limit:
        raise InputBoundError(f"{name} in the ZIP decompresses to {declared / 2**20:.0f} MiB; raylab reads "
                              f"at most {limit / 2**20:.0f} MiB")
    return z.read(name)
