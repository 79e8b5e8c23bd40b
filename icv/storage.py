"""Vector files: self-describing safetensors, written atomically, read defensively.

Layout: one float32 tensor ``direction.<l>`` of shape ``(hidden_size,)`` per layer,
one float32 tensor ``layer_scales`` of shape ``(num_layers,)``, from format 2 one
float32 tensor ``shift.<l>`` of shape ``(hidden_size,)`` per layer when the shifts are
known (all layers or none), and the metadata (see :mod:`icv.metadata`) as header
strings.  Format 1 files (no shifts) load as vectors whose shifts are unknown.  Vector files travel between people,
so loading treats every byte as hostile: the header is parsed and checked by
this module (sizes, names, dtypes, shapes, offsets) before any tensor memory is
allocated, and nothing is ever unpickled.  The tensors are then read by this
module too (from the offsets it checked), so no second parser can disagree
with the checks.

Saving never leaves a partial file: the bytes go to a temporary file
``.<name>.<random>.tmp`` in the target's folder, are fsynced, and the temporary
file is renamed over the target.  A process killed mid-save may leave that
temporary file behind (never the target half-written); such leftovers are safe
to delete, and loading never looks at them.
"""

from __future__ import annotations

import array
import json
import os
import stat
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from safetensors.torch import save as save_safetensors_bytes

from . import metadata as meta
from .errors import FormatVersionError, VectorExistsError, VectorFileError
from .magnitudes import check_magnitudes

# Our headers are a few kB; anything far larger is not a vector file of ours.
MAX_HEADER_BYTES = 1 << 20
# Largest model we expect: 1,000 layers of width 65,536 in float32, directions and
# shifts (~512 MB).  GGUF control vectors are held to the same bounds (icv.gguf).
MAX_LAYERS = 1000
MAX_HIDDEN = 65536
MAX_TENSOR_BYTES = 2 * MAX_LAYERS * MAX_HIDDEN * 4 + MAX_LAYERS * 4

# The header field that marks a file of another kind than a steering vector (icv.condition).
CONDITION_KIND = "condition"


class StoredVector(Protocol):
    """What a vector file holds; :class:`icv.InContextVector` has it.

    The file I/O goes one way: ``icv.vector`` uses this module, which never imports it.
    """

    @property
    def directions(self) -> torch.Tensor: ...

    @property
    def layer_scales(self) -> torch.Tensor: ...

    @property
    def shifts(self) -> torch.Tensor | None: ...

    @property
    def metadata(self) -> dict[str, Any]: ...


class VectorParts(NamedTuple):
    """A checked vector file's contents, in the order ``InContextVector(*parts)`` takes them."""

    directions: torch.Tensor
    metadata: dict[str, Any]
    layer_scales: torch.Tensor
    shifts: torch.Tensor | None


def tensor_names(num_layers: int, shifts: bool = False) -> list[str]:
    names = [f"direction.{layer}" for layer in range(num_layers)] + ["layer_scales"]
    return names + ([f"shift.{layer}" for layer in range(num_layers)] if shifts else [])


def to_bytes(vector: StoredVector) -> bytes:
    """The complete file contents for ``vector`` (always the current format version)."""
    tensors = {f"direction.{l}": row.clone() for l, row in enumerate(vector.directions)}
    tensors["layer_scales"] = vector.layer_scales.clone()
    if vector.shifts is not None:
        tensors.update({f"shift.{l}": row.clone() for l, row in enumerate(vector.shifts)})
    metadata = {**vector.metadata, "icv_format_version": meta.FORMAT_VERSION}
    return _sorted_metadata(save_safetensors_bytes(tensors, metadata=meta.encode(metadata)))


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` with the header's metadata keys in sorted order, so that the same vector is the
    same bytes (safetensors writes them in a hash map's order, which changes from run to run).

    The header keeps its length (only the order changes; spaces pad it as safetensors does),
    so the tensors' offsets stay valid; a header that would not fit is left as it was.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def save_vector(vector: StoredVector, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write ``vector`` to ``path``: temp file in the same folder, fsync, rename."""
    write_file(to_bytes(vector), path, overwrite=overwrite, what="a vector")


def write_file(
    data: bytes, path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "a file"
) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Args:
        data: the file's complete contents.
        path: where to write; its folder must exist.
        overwrite: replace an existing file (otherwise :class:`VectorExistsError`, even when
            another process creates the file meanwhile).
        what: what the file is, for error messages (``"a vector"``, ``"a model card"``).

    Raises:
        VectorExistsError: the file exists and ``overwrite`` is false.
        VectorFileError: the path is a folder, its folder is missing, or the write fails.
    """
    target = _as_path(path)
    if target.is_dir():
        raise VectorFileError(f"cannot save {what} to '{target}': it is a directory")
    if not overwrite and _exists(target):
        raise VectorExistsError(f"'{target}' exists; pass overwrite=True (or --force) to replace it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise VectorFileError(f"cannot save '{target}': folder '{folder}' does not exist")
    try:
        tmp = _write_temp(data, folder, target.name)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise VectorFileError(f"cannot save {str(target)[:200]!r}: {_reason(error)}") from None
    try:
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    except VectorExistsError:
        raise
    except OSError as error:
        raise VectorFileError(f"cannot save '{target}': {_reason(error)}") from None
    finally:
        # After a rename the temp name is gone; after a link (or a failure) it
        # is a second name for data we no longer need.
        tmp.unlink(missing_ok=True)
    _fsync_folder(folder)


def _reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _as_path(path: object) -> Path:
    try:
        return Path(path)  # type: ignore[arg-type]
    except TypeError:
        raise VectorFileError(f"{path!r:.60} is not a file path") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError) as error:
        raise VectorFileError(f"cannot use the path {str(path)[:200]!r}: {error}") from None


def new_file_mode() -> int:
    """The permissions an ordinary new file gets (mkstemp's are owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_temp(data: bytes, folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        # Whatever interrupted us (disk full, KeyboardInterrupt), the target is
        # untouched: only the temp file can be partial, and it goes.
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _link_new(tmp: Path, target: Path) -> None:
    """Give ``tmp``'s data the name ``target`` only if that name is free (atomically)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        # Someone created the file since we looked: still not ours to replace.
        raise VectorExistsError(
            f"'{target}' exists; pass overwrite=True (or --force) to replace it"
        ) from None
    except OSError:
        # No hard links on this filesystem: fall back to check-then-rename.
        if target.exists():
            raise VectorExistsError(
                f"'{target}' exists; pass overwrite=True (or --force) to replace it"
            ) from None
        os.replace(tmp, target)


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


def load_vector(path: str | os.PathLike[str]) -> VectorParts:
    """Read and validate a vector file's parts, or raise a :class:`VectorFileError`.

    A file of another kind (GGUF, demonstrations, model weights ...) gets an error that
    says what it is and what reads it.
    """
    file = _as_path(path)
    try:
        return from_bytes(_read_bounded(file), source=str(file))
    except FormatVersionError:
        raise
    except VectorFileError as error:
        from .filekinds import what_it_is

        kind = what_it_is(file)
        if kind is None:
            raise
        raise VectorFileError(f"'{file}' is {kind}") from error


MAX_FILE_BYTES = MAX_HEADER_BYTES + MAX_TENSOR_BYTES + 8

# Opening a FIFO for reading would wait for a writer; non-blocking, it returns
# at once and the check below refuses it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing folders, devices, pipes and anything too large."""
    try:
        if path.is_dir():
            raise VectorFileError(f"'{path}' is a directory, not a vector file")
        fd = os.open(path, _OPEN_FLAGS)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise VectorFileError(f"'{path}' is a directory, not a vector file")
            if not stat.S_ISREG(info.st_mode):
                raise VectorFileError(f"'{path}' is not a regular file (a device or a pipe?)")
            if info.st_size > MAX_FILE_BYTES:
                raise VectorFileError(f"'{path}' is {info.st_size} bytes: too large to be a vector file")
            # Bounded even if the file grows while we read it.
            data = handle.read(MAX_FILE_BYTES + 1)
    except VectorFileError:
        raise
    except OSError as error:
        raise VectorFileError(f"cannot read '{path}': {_reason(error)}") from None
    except ValueError as error:  # e.g. a NUL byte in the path
        raise VectorFileError(f"cannot read {str(path)[:200]!r}: {error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise VectorFileError(f"'{path}' grew past {MAX_FILE_BYTES} bytes while being read")
    return data


def from_bytes(data: bytes, *, source: str = "vector file") -> VectorParts:
    """Parse a vector's parts from file contents, checking everything before allocating."""
    header = _parse_header(data, source)
    raw_meta = header.pop("__metadata__", None)
    if not isinstance(raw_meta, dict):
        raise VectorFileError(f"{source}: no icv metadata in the header (not an icv vector file)")
    if raw_meta.get("icv_kind") == CONDITION_KIND:
        raise VectorFileError(
            f"{source} is an icv condition (it decides which rows are steered), not a steering "
            "vector: load it with icv.Condition.load and pass it as when= (command line: --when)"
        )
    metadata = meta.decode(raw_meta, source=source)
    num_layers, hidden = metadata["num_layers"], metadata["hidden_size"]
    start = 8 + _header_length(data)
    body = memoryview(data)[start:]
    # Shift tensors exist from format 2 on, for all layers or none.
    has_shifts = metadata["icv_format_version"] >= 2 and "shift.0" in header
    _check_sizes(header, num_layers, hidden, len(body), has_shifts, source)
    _check_tensor_table(header, num_layers, hidden, len(body), has_shifts, source)
    directions = _read_rows(body, header, "direction", num_layers)
    scales = _read_f32(body, header["layer_scales"]["data_offsets"])
    shifts = _read_rows(body, header, "shift", num_layers) if has_shifts else None
    finite = [torch.isfinite(t).all() for t in (directions, scales, shifts) if t is not None]
    if not all(bool(f) for f in finite):
        raise VectorFileError(f"{source}: the vector holds NaN or infinite values")
    check_magnitudes(directions, scales, shifts, scales_measured=metadata["method"] != "gguf", source=source)
    metadata = {k: v for k, v in metadata.items() if k not in ("hidden_size", "num_layers")}
    return VectorParts(directions, metadata, scales, shifts)


def _read_rows(body: memoryview, header: dict[str, Any], prefix: str, num_layers: int) -> torch.Tensor:
    return torch.stack([_read_f32(body, header[f"{prefix}.{l}"]["data_offsets"]) for l in range(num_layers)])


def _check_sizes(
    table: dict[str, Any], num_layers: int, hidden: int, body: int, shifts: bool, source: str
) -> None:
    """Cheap checks first, so that absurd metadata costs nothing (no name lists, no memory)."""
    rows = 2 * num_layers if shifts else num_layers
    if len(table) != rows + 1:
        raise VectorFileError(
            f"{source}: the metadata says {num_layers} layers, so {rows + 1} tensors, "
            f"but the file lists {len(table)}"
        )
    expected = 4 * (rows * hidden + num_layers)
    if body != expected:
        raise VectorFileError(
            f"{source}: {body} bytes of tensor data, but {num_layers} layers of width {hidden} "
            f"need {expected} (a truncated or altered file?)"
        )


def _read_f32(body: memoryview, offsets: list[int]) -> torch.Tensor:
    """One little-endian float32 tensor from already-checked offsets."""
    values = array.array("f")
    values.frombytes(body[offsets[0] : offsets[1]])
    if sys.byteorder == "big":
        values.byteswap()
    return torch.frombuffer(values, dtype=torch.float32).clone()


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _parse_header(data: bytes, source: str) -> dict[str, Any]:
    if len(data) < 8:
        raise VectorFileError(f"{source}: {len(data)} bytes is too short to be a vector file")
    length = _header_length(data)
    if length > MAX_HEADER_BYTES or length > len(data) - 8:
        raise VectorFileError(f"{source}: header length {length} does not fit the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    # ValueError: bad UTF-8 or JSON, or an integer past Python's digit limit.
    except (ValueError, RecursionError):
        raise VectorFileError(f"{source}: the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise VectorFileError(f"{source}: the header is not a JSON object")
    return header


def _check_tensor_table(
    table: dict[str, Any], num_layers: int, hidden: int, body: int, shifts: bool, source: str
) -> None:
    expected = set(tensor_names(num_layers, shifts))
    names = set(table)
    if names != expected:
        missing = sorted(expected - names)[:3]
        extra = sorted(names - expected)[:3]
        raise VectorFileError(
            f"{source}: tensors do not match the metadata ({num_layers} layers): "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    shapes = {name: num_layers if name == "layer_scales" else hidden for name in expected}
    check_tensor_spans(table, shapes, body, source)


def check_tensor_spans(table: dict[str, Any], shapes: dict[str, int], body: int, source: str) -> None:
    """Every tensor of ``table`` is F32 of length ``shapes[name]``, and their data tiles the body exactly.

    Shared by every kind of icv file (vectors, conditions): the names were checked by the caller.
    """
    spans = []
    for name, info in table.items():
        shape = [shapes[name]]
        if isinstance(info, dict) and set(info) != {"dtype", "shape", "data_offsets"}:
            raise VectorFileError(
                f"{source}: tensor '{name}' should have the fields dtype, shape and "
                f"data_offsets, got {', '.join(sorted(map(str, info)))[:80]}"
            )
        if not isinstance(info, dict) or info["dtype"] != "F32" or info["shape"] != shape:
            raise VectorFileError(
                f"{source}: tensor '{name}' should be F32 of shape {shape}, got {_describe(info)}"
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
