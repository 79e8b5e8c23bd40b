"""Vector files: self-describing safetensors, written atomically, read defensively.

Layout: one float32 tensor ``direction.<l>`` of shape ``(hidden_size,)`` per layer,
one float32 tensor ``layer_scales`` of shape ``(num_layers,)``, and the metadata
(see :mod:`icv.metadata`) as header strings.  Vector files travel between people,
so loading treats every byte as hostile: the header is parsed and checked by
this module (sizes, names, dtypes, shapes, offsets) before any tensor memory is
allocated, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from . import metadata as meta
from .errors import VectorExistsError, VectorFileError

if TYPE_CHECKING:
    from .vector import InContextVector

# Our headers are a few kB; anything far larger is not a vector file of ours.
MAX_HEADER_BYTES = 1 << 20
# Largest model we expect: 1,000 layers of width 65,536 in float32 (~256 MB).
MAX_TENSOR_BYTES = 1000 * 65536 * 4 + 1000 * 4


def tensor_names(num_layers: int) -> list[str]:
    return [f"direction.{layer}" for layer in range(num_layers)] + ["layer_scales"]


def to_bytes(vector: InContextVector) -> bytes:
    """The complete file contents for ``vector``."""
    tensors = {f"direction.{l}": row.clone() for l, row in enumerate(vector.directions)}
    tensors["layer_scales"] = vector.layer_scales.clone()
    return save_safetensors_bytes(tensors, metadata=meta.encode(vector.metadata))


def save_vector(
    vector: InContextVector, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``vector`` to ``path``: temp file in the same folder, fsync, rename."""
    target = Path(path)
    if target.is_dir():
        raise VectorFileError(f"cannot save a vector to '{target}': it is a directory")
    if target.exists() and not overwrite:
        raise VectorExistsError(
            f"'{target}' exists; pass overwrite=True (or --force) to replace it"
        )
    data = to_bytes(vector)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise VectorFileError(f"cannot save '{target}': folder '{folder}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        # Whatever interrupted us (disk full, KeyboardInterrupt), the target is
        # untouched: only the temp file can be partial, and it goes.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def load_vector(path: str | os.PathLike[str]) -> InContextVector:
    """Read and validate a vector file, or raise a :class:`VectorFileError`."""
    source = str(path)
    data = _read_bounded(Path(path))
    return from_bytes(data, source=source)


def _read_bounded(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise VectorFileError(f"'{path}' is a directory, not a vector file")
        size = path.stat().st_size
        if size > MAX_HEADER_BYTES + MAX_TENSOR_BYTES + 8:
            raise VectorFileError(f"'{path}' is {size} bytes: too large to be a vector file")
        with path.open("rb") as handle:
            return handle.read()
    except VectorFileError:
        raise
    except OSError as error:
        raise VectorFileError(f"cannot read '{path}': {error.strerror or error}") from None


def from_bytes(data: bytes, *, source: str = "vector file") -> InContextVector:
    """Parse a vector from file contents, checking everything before allocating."""
    from .vector import InContextVector

    header = _parse_header(data, source)
    raw_meta = header.pop("__metadata__", None)
    if not isinstance(raw_meta, dict):
        raise VectorFileError(f"{source}: no icv metadata in the header (not an icv vector file)")
    metadata = meta.decode(raw_meta, source=source)
    num_layers, hidden = metadata["num_layers"], metadata["hidden_size"]
    _check_tensor_table(header, num_layers, hidden, len(data) - 8 - _header_length(data), source)
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # the Rust parser's own error types
        raise VectorFileError(f"{source}: malformed safetensors data ({error})") from None
    directions = torch.stack([tensors[f"direction.{l}"] for l in range(num_layers)])
    scales = tensors["layer_scales"]
    if not bool(torch.isfinite(directions).all()) or not bool(torch.isfinite(scales).all()):
        raise VectorFileError(f"{source}: the vector holds NaN or infinite values")
    metadata = {k: v for k, v in metadata.items() if k not in ("hidden_size", "num_layers")}
    return InContextVector(directions, metadata, scales)


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _parse_header(data: bytes, source: str) -> dict[str, Any]:
    if len(data) < 8:
        raise VectorFileError(f"{source}: {len(data)} bytes is too short to be a vector file")
    length = _header_length(data)
    if length > MAX_HEADER_BYTES or length > len(data) - 8:
        raise VectorFileError(
            f"{source}: header length {length} does not fit the file ({len(data)} bytes)"
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise VectorFileError(f"{source}: the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise VectorFileError(f"{source}: the header is not a JSON object")
    return header


def _check_tensor_table(
    table: dict[str, Any], num_layers: int, hidden: int, body: int, source: str
) -> None:
    expected = set(tensor_names(num_layers))
    names = set(table)
    if names != expected:
        missing = sorted(expected - names)[:3]
        extra = sorted(names - expected)[:3]
        raise VectorFileError(
            f"{source}: tensors do not match the metadata ({num_layers} layers): "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    spans = []
    for name, info in table.items():
        shape = [num_layers] if name == "layer_scales" else [hidden]
        if not isinstance(info, dict) or info.get("dtype") != "F32" or info.get("shape") != shape:
            raise VectorFileError(
                f"{source}: tensor '{name}' should be F32 of shape {shape}, got "
                f"{_describe(info)}"
            )
        offsets = info.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
            or offsets[1] - offsets[0] != 4 * shape[0]
        ):
            raise VectorFileError(f"{source}: tensor '{name}' has invalid data offsets {offsets!r:.60}")
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    covered = 0
    for start, end in spans:
        if start != covered:
            raise VectorFileError(f"{source}: tensor data overlaps or leaves gaps")
        covered = end
    if covered != body:
        raise VectorFileError(f"{source}: {body - covered} bytes of data follow the last tensor")


def _describe(info: object) -> str:
    if isinstance(info, dict):
        return f"dtype {info.get('dtype')!r:.20}, shape {info.get('shape')!r:.40}"
    return repr(info)[:40]
