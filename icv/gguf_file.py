"""Reading a GGUF file's header within bounds, and its F32 tensors from the checked offsets.

A GGUF file declares its own sizes: how many metadata fields and tensors it has, how long
each string and array is, each tensor's shape.  A reader that trusts them allocates what
a few bytes ask for (gguf-py's ``GGUFReader`` built 3 GB of Python objects in 73 s for a
16 MB file declaring one array of two million empty strings).  This module reads the
header with every declared size checked against a bound *before* it is used, so the work
and memory a file can cause grow with what the bounds allow, never with what it claims:

* at most :data:`MAX_FIELDS` metadata fields, keys of at most :data:`MAX_KEY_BYTES`,
  strings of at most :data:`MAX_STRING_BYTES`, :data:`MAX_ARRAY_ITEMS` array items in all
  (a control vector holds a few scalars; a model file's vocabulary is not one);
* at most ``max_tensors`` tensors (the caller's bound), names of at most
  :data:`MAX_NAME_BYTES`, at most four dimensions (ggml's limit);
* a tensor's data must lie inside the file, at the file's alignment.

Nothing is unpickled and no second parser reads the file: the tensors are read from the
offsets this module checked (one ``read`` of the declared width each).  Layout:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3; version 1,
with 32-bit counts, predates every control vector writer).
"""

from __future__ import annotations

import array
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import VectorFileError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
F32 = 0  # ggml's type number of float32 tensors
MAX_FIELDS = 64
MAX_KEY_BYTES = 256
MAX_STRING_BYTES = 1 << 16
MAX_ARRAY_ITEMS = 4096
MAX_NAME_BYTES = 256
MAX_DIMS = 4

# GGUF's value types: struct codes of the scalars, then STRING (8) and ARRAY (9).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it: ``shape`` in the file's order (ggml's ``ne``)."""

    name: str
    shape: tuple[int, ...]
    kind: int  # ggml's type number
    offset: int  # from the start of the data section

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """A GGUF file's metadata (scalars and strings; arrays are ``None``) and tensor table."""

    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_start: int
    file_size: int
    byte_order: str  # struct's "<" or ">"


class _Cursor:
    """Bounded reads from the file's start; running off its end is a :class:`VectorFileError`."""

    def __init__(self, handle: BinaryIO, source: str, order: str) -> None:
        self.handle = handle
        self.source = source
        self.order = order
        self.position = 0

    def take(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise VectorFileError(f"{self.source} is not a valid GGUF file (it ends inside its header)")
        self.position += count
        return data

    def number(self, code: str) -> Any:
        return struct.unpack(self.order + code, self.take(struct.calcsize(code)))[0]

    def string(self, limit: int, what: str) -> str:
        length = self.number("Q")
        if length > limit:
            raise VectorFileError(f"{self.source}: {what} is {length} bytes long; at most {limit} are read")
        return self.take(length).decode("utf-8", errors="replace")


def read_header(path: Path, *, max_tensors: int) -> Header:
    """The header of the GGUF file at ``path``, every declared size checked before it is used."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return _read_header(handle, source, size, max_tensors)
    except VectorFileError:
        raise
    except OSError as error:
        raise VectorFileError(f"cannot read '{path}': {error.strerror or error}") from None


def _read_header(handle: BinaryIO, source: str, size: int, max_tensors: int) -> Header:
    start = handle.read(8)
    if len(start) < 8 or start[:4] != MAGIC:
        raise VectorFileError(f"'{source}' is not a valid GGUF file (no GGUF magic)")
    # gguf-py's rule: a version whose low half is zero was written in the other byte order.
    order = ">" if struct.unpack("<I", start[4:])[0] & 0xFFFF == 0 else "<"
    version = struct.unpack(order + "I", start[4:])[0]
    if version not in VERSIONS:
        raise VectorFileError(f"'{source}' is not a valid GGUF file (version {version}; read: 2 and 3)")
    cursor = _Cursor(handle, source, order)
    cursor.position = 8
    tensor_count, field_count = cursor.number("Q"), cursor.number("Q")
    if field_count > MAX_FIELDS:
        raise VectorFileError(
            f"{source}: declares {field_count} metadata fields; a control vector has a few (at most "
            f"{MAX_FIELDS} are read)"
        )
    if tensor_count > max_tensors:
        raise VectorFileError(f"{source}: declares {tensor_count} tensors; at most {max_tensors} are read")
    fields = _read_fields(cursor, field_count)
    tensors = tuple(_read_tensor_info(cursor) for _ in range(tensor_count))
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or alignment < 1
        or alignment & (alignment - 1)
    ):
        raise VectorFileError(f"{source}: general.alignment {alignment!r:.20} is not a power of two")
    data_start = -(-cursor.position // alignment) * alignment
    for tensor in tensors:
        if tensor.offset % alignment:
            raise VectorFileError(f"{source}: tensor '{tensor.name}' is not aligned to {alignment} bytes")
    return Header(fields, tensors, data_start, size, order)


def _read_fields(cursor: _Cursor, count: int) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    budget = [MAX_ARRAY_ITEMS]
    for _ in range(count):
        key = cursor.string(MAX_KEY_BYTES, "a metadata key")
        if key in fields:
            raise VectorFileError(f"{cursor.source}: metadata key '{key}' appears twice")
        fields[key] = _read_value(cursor, cursor.number("I"), key, budget, nested=False)
    return fields


def _read_value(cursor: _Cursor, kind: int, key: str, budget: list[int], *, nested: bool) -> Any:
    if kind in _SCALARS:
        return cursor.number(_SCALARS[kind])
    if kind == _STRING:
        return cursor.string(MAX_STRING_BYTES, f"the value of '{key}'")
    if kind == _ARRAY and not nested:
        item_kind, count = cursor.number("I"), cursor.number("Q")
        if count > budget[0]:
            raise VectorFileError(
                f"{cursor.source}: metadata array '{key}' holds {count} items; a control vector's "
                f"arrays hold at most {MAX_ARRAY_ITEMS} in all (is this a model file?)"
            )
        budget[0] -= count
        for _ in range(count):
            _read_value(cursor, item_kind, key, budget, nested=True)
        return None  # no array is a control vector's business
    raise VectorFileError(f"{cursor.source}: metadata '{key}' has an unknown value type {kind}")


def _read_tensor_info(cursor: _Cursor) -> TensorInfo:
    name = cursor.string(MAX_NAME_BYTES, "a tensor name")
    dims = cursor.number("I")
    if not 1 <= dims <= MAX_DIMS:
        raise VectorFileError(f"{cursor.source}: tensor '{name}' has {dims} dimensions (1 to {MAX_DIMS})")
    shape = tuple(cursor.number("Q") for _ in range(dims))
    return TensorInfo(name, shape, cursor.number("I"), cursor.number("Q"))


def read_f32(path: Path, header: Header, tensor: TensorInfo) -> torch.Tensor:
    """A 1-D float32 copy of an F32 ``tensor``'s data, read from its checked place in the file."""
    count = tensor.elements
    begin = header.data_start + tensor.offset
    if tensor.kind != F32 or begin + 4 * count > header.file_size:
        raise VectorFileError(f"{path}: tensor '{tensor.name}' does not lie inside the file")
    with open(path, "rb") as handle:
        handle.seek(begin)
        data = handle.read(4 * count)
    if len(data) != 4 * count:
        raise VectorFileError(f"{path}: tensor '{tensor.name}' does not lie inside the file (it shrank?)")
    values = array.array("f")
    values.frombytes(data)
    if (header.byte_order == ">") != (sys.byteorder == "big"):
        values.byteswap()
    return torch.frombuffer(values, dtype=torch.float32).clone()
