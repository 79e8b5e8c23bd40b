"""GGUF control vectors: carry an in-context vector to llama.cpp (and repeng, EasySteer) and back.

The layout, as llama.cpp reads it (``common_control_vector_load_one`` in
``common/common.cpp`` and ``llama_adapter_cvec`` in ``src/llama-adapter.cpp``):

* ``general.architecture = "controlvector"``; ``controlvector.model_hint`` (a model
  type such as ``llama``) and ``controlvector.layer_count`` are informative only:
  llama.cpp's loader reads no metadata at all.
* One F32, 1-D tensor of ``n_embd`` values per steered layer, named ``direction.N``.
  The loader puts ``direction.N`` (times the file's scale) at offset ``n_embd * (N - 1)``
  of a flat buffer; ``llama_adapter_cvec::apply`` fills the tensor of block ``il`` from
  offset ``n_embd * (il - 1)`` for ``il = 1 .. n_layer - 1``.  The two ``- 1`` cancel:
  **``direction.N`` is added to the output of decoder block N, counted from 0** (the
  ``l_out`` of block ``il``, after the MLP's residual add, at every position).
* Block 0 has no slot: the loader rejects ``direction.0`` outright, so block 0 cannot be
  steered through this format.  repeng writes the same convention (its ``direction.N``
  is applied to ``model.layers[N]``'s output) for layers ``1 .. n_layer - 1``.
* ``layer_count`` is not consistent between writers: llama.cpp's cvector-generator and
  repeng write the number of direction tensors (``n_layer - 1`` for a full vector), other
  tools write ``n_layer``.  This module writes the number of tensors it writes
  (``n_layer - 1``) and, reading, never trusts it for the model's depth.

Mapping to this library's vectors (``mode="add"``, ``site="block"``; see :mod:`icv.steer`):

* Export writes what additive block-output steering adds to block ``l``:
  ``direction.l = strength * layer_scales[l] * directions[l]`` for ``l = 1 .. L - 1``,
  with the strength folded in (default: the vector's recommended strength when its
  metadata says ``add@block``, else ``icv.strength.default_strength("add", L)``).  Block 0's
  direction is dropped, with a warning when it is not zero.  ``llama-cli
  --control-vector FILE`` then steers like ``icv.steer(model, vec, strength, mode="add",
  site="block", layers=range(1, L))``; ``--control-vector-scaled FILE S`` multiplies by
  ``S`` on top of the folded strength, and ``--control-vector-layer-range A B`` selects
  blocks like ``layers=range(A, B + 1)``.
* Import gives the vector llama.cpp would apply: ``directions[N] = direction.N``
  (rows the file leaves out are zero, and ``layers`` lists the blocks it covers),
  ``shifts = directions``, ``layer_scales = 1``, ``recommended_strength = 1.0``,
  ``injection_mode="add"``, ``injection_site="block"``, ``model_type`` from the hint,
  ``model_name=""`` (unknown), ``method="gguf"``.  So ``icv.steer(model, imported)``
  reproduces ``--control-vector FILE``, and ``strength=S`` reproduces
  ``--control-vector-scaled FILE S``.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distribution import DISTRIBUTION
from .errors import OptionError, VectorExistsError, VectorFileError
from .gguf_file import F32, Header, TensorInfo, read_f32, read_header
from .magnitudes import check_magnitudes
from .storage import MAX_HIDDEN, MAX_LAYERS, new_file_mode
from .strength import planned_strength, warn_default
from .vector import InContextVector

ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_NAME = "general.name"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
TENSOR_PREFIX = "direction."
# Tensors of other names that a file may carry besides its directions (skipped with a warning).
MAX_OTHER_TENSORS = 16

# llama.cpp names some architectures differently from transformers' model_type;
# a hint in llama.cpp's spelling becomes the model_type this library compares.
LLAMA_CPP_MODEL_TYPES = {
    "gptneox": "gpt_neox",
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "command-r": "cohere",
}


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise OptionError(
            f"GGUF control vectors need the 'gguf' package, a dependency of {DISTRIBUTION} that is "
            "missing here: pip install 'gguf>=0.14'"
        ) from None
    return gguf


# -- export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    strength: float
    model_hint: str
    blocks: tuple[int, ...]  # the decoder blocks that got a direction.N tensor
    dropped_block0: bool  # block 0 carried a direction that the format cannot hold


def export_strength(vector: InContextVector) -> float:
    """The strength folded into an export when none is given.

    The vector's recommended strength applies only when it was recommended for the
    additive block-output mode; a strength recommended for the rotation means
    something else (an angle), so the additive default for the vector's depth takes
    over, with a :class:`icv.DefaultStrengthWarning`.
    """
    planned = planned_strength(vector, "add", "block")
    warn_default(vector, planned, "add", stacklevel=3)  # the caller of export_gguf
    return planned.value


def additive_deltas(vector: InContextVector, strength: float) -> torch.Tensor:
    """``(num_layers, hidden)``: what ``steer(..., mode="add", site="block")`` adds per block.

    The same products in the same order as :func:`icv.steer` computes them, so a
    re-imported file steers bit-for-bit like the original.
    """
    return (vector.directions * vector.layer_scales[:, None]) * torch.tensor(strength, dtype=torch.float32)


def _check_strength(strength: object) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise OptionError(f"strength must be a number, got {strength!r:.40}")
    value = float(strength)
    if not math.isfinite(value):
        raise OptionError(f"strength must be finite, got {value}")
    return value


def export_gguf(
    vector: InContextVector,
    path: str | os.PathLike[str],
    *,
    strength: float | None = None,
    overwrite: bool = False,
) -> GGUFExport:
    """Write ``vector`` as a llama.cpp control vector (see the module docstring for the mapping).

    Warns when block 0 carries a direction, which the format cannot express.  Written
    atomically (a temporary file in the same folder, then a rename).

    Args:
        vector: the vector to export.
        path: the ``.gguf`` file to write.
        strength: the strength folded into the tensors (llama.cpp applies the file at
            scale 1); ``None`` uses :func:`export_strength`.
        overwrite: replace an existing file.

    Returns:
        What was written: the path, the strength, the model hint and the blocks covered.

    Raises:
        VectorExistsError: ``path`` exists and ``overwrite`` is False.
        VectorFileError: the file cannot be written.
    """
    if not isinstance(vector, InContextVector):
        raise OptionError("export_gguf needs an icv.InContextVector")
    gguf = _require_gguf()
    strength = export_strength(vector) if strength is None else _check_strength(strength)
    if vector.num_layers < 2:
        raise OptionError(
            "a one-layer vector has nothing llama.cpp can steer: control vectors start at block 1"
        )
    target = _writable_target(Path(path), overwrite)
    deltas = additive_deltas(vector, strength)
    dropped = bool((deltas[0] != 0).any())
    if dropped:
        warnings.warn(
            f"vector '{vector.name}': block 0 carries a direction that a GGUF control vector "
            "cannot hold (llama.cpp rejects direction.0); it is left out of the export",
            UserWarning,
            stacklevel=2,
        )
    blocks = tuple(range(1, vector.num_layers))
    hint = vector.metadata["model_type"]
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(KEY_NAME, vector.name)
        writer.add_string(KEY_MODEL_HINT, hint)
        writer.add_uint32(KEY_LAYER_COUNT, len(blocks))
        for block in blocks:
            writer.add_tensor(f"{TENSOR_PREFIX}{block}", deltas[block].numpy().copy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return GGUFExport(target, strength, hint, blocks, dropped)


def _writable_target(target: Path, overwrite: bool) -> Path:
    if target.is_dir():
        raise VectorFileError(f"cannot write '{target}': it is a directory")
    if target.exists() and not overwrite:
        raise VectorExistsError(f"'{target}' exists; pass overwrite=True (or --force) to replace it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise VectorFileError(f"cannot write '{target}': folder '{folder}' does not exist")
    return target


# -- import ---------------------------------------------------------------------------


def _open_header(path: Path, max_tensors: int) -> Header:
    if path.is_dir():
        raise VectorFileError(f"'{path}' is a directory, not a GGUF file")
    if not path.is_file():
        raise VectorFileError(f"cannot read '{path}': no such file")
    return read_header(path, max_tensors=max_tensors)


def _direction_block(name: str, source: str) -> int | None:
    """The block of a ``direction.N`` tensor; ``None`` for tensors of another name."""
    if not name.startswith(TENSOR_PREFIX):
        return None
    suffix = name[len(TENSOR_PREFIX) :]
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not (suffix.isascii() and suffix.isdigit()):
        raise VectorFileError(f"{source}: tensor '{name}' has no valid layer index")
    return int(suffix)


def _direction_infos(header: Header, depth: int, depth_known: bool, source: str) -> dict[int, TensorInfo]:
    """The ``direction.N`` tensors by block, every declared size checked before any data is read.

    ``depth``: blocks must be below it (the model's layer count when ``depth_known``, else
    the largest depth this library reads).
    """
    directions: dict[int, TensorInfo] = {}
    others: list[str] = []
    for tensor in header.tensors:
        block = _direction_block(tensor.name, source)
        if block is None:
            others.append(tensor.name)
            continue
        if block >= depth:
            what = (
                f"the model has {depth} layers (0 .. {depth - 1})"
                if depth_known
                else (
                    f"this library reads models of at most {depth} layers (give the model's depth: num_layers)"
                )
            )
            raise VectorFileError(f"{source}: has {tensor.name:.40} but {what}")
        if block in directions:
            raise VectorFileError(f"{source}: two tensors are block {block}'s direction")
        _check_direction_info(tensor, block, source)
        directions[block] = tensor
    if others:
        warnings.warn(
            f"{source}: ignoring {len(others)} tensor(s) that are not directions "
            f"({', '.join(others[:3])}); llama.cpp would refuse this file",
            UserWarning,
            stacklevel=3,
        )
    if not directions:
        raise VectorFileError(f"{source}: no direction.N tensors: not a control vector")
    widths = {d.shape[0] for d in directions.values()}
    if len(widths) > 1:
        raise VectorFileError(
            f"{source}: direction tensors have different lengths ({', '.join(map(str, sorted(widths)))})"
        )
    return directions


def _check_direction_info(tensor: TensorInfo, block: int, source: str) -> None:
    if tensor.kind != F32:
        raise VectorFileError(
            f"{source}: direction.{block} is of ggml type {tensor.kind}; control vectors must be F32 "
            "(as llama.cpp requires)"
        )
    shape = list(tensor.shape)
    # ggml counts trailing dimensions of size 1 as absent, as llama.cpp's check does.
    if any(n != 1 for n in shape[1:]) or shape[0] < 1:
        raise VectorFileError(f"{source}: direction.{block} has shape {shape}, expected one dimension")
    if shape[0] > MAX_HIDDEN:
        raise VectorFileError(
            f"{source}: direction.{block} has {shape[0]} values; models are at most {MAX_HIDDEN} wide"
        )


def _read_direction(path: Path, header: Header, tensor: TensorInfo, block: int, source: str) -> torch.Tensor:
    values = read_f32(path, header, tensor)
    if not bool(torch.isfinite(values).all()):
        raise VectorFileError(f"{source}: direction.{block} holds NaN or infinite values")
    return values


def _model_type(hint: object) -> str:
    if not isinstance(hint, str):
        return ""
    hint = hint.strip()
    return LLAMA_CPP_MODEL_TYPES.get(hint, hint)


def import_gguf(
    path: str | os.PathLike[str],
    *,
    num_layers: int | None = None,
    model_type: str | None = None,
    name: str | None = None,
    model: nn.Module | None = None,
) -> InContextVector:
    """Read a GGUF control vector (llama.cpp's cvector-generator, repeng, EasySteer, :func:`export_gguf`).

    The result steers like llama.cpp applies the file (see the module docstring) and
    records the blocks the file covers (``vector.layers``): :func:`icv.steer` hooks only
    those.  Without ``num_layers`` or ``model``, the depth is one more than the highest
    ``direction.N``; a file that leaves out the last blocks then gives a shorter vector,
    which :func:`icv.steer` pads to the model it steers.

    Args:
        path: the ``.gguf`` file.
        num_layers: the model's depth; the vector is padded to it with zero rows.
        model_type: overrides ``controlvector.model_hint`` (which writers spell their own
            way, e.g. llama.cpp's ``gemma3`` for transformers' ``gemma3_text``).
        name: the vector's name; default: the file's ``general.name``, else its file name.
        model: the model the vector is for: its decoder layers give the depth (instead of
            ``num_layers``).

    Returns:
        The vector.

    Raises:
        VectorFileError: not a valid GGUF control vector (sizes, names and values are all
            checked before anything is allocated).
    """
    file = Path(path)
    source = str(file)
    if model is not None and num_layers is None:
        from .layers import decoder_layers

        num_layers = len(decoder_layers(model))
    if num_layers is not None and (
        isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1
    ):
        raise OptionError(f"num_layers must be a positive integer, got {num_layers!r}")
    depth = MAX_LAYERS if num_layers is None else num_layers
    # Direction tensors are at most one per block; a few others are skipped with a warning.
    header = _open_header(file, max_tensors=depth + MAX_OTHER_TENSORS)
    architecture = header.fields.get(KEY_ARCHITECTURE)
    if architecture is None:
        raise VectorFileError(f"{source}: no general.architecture: not a GGUF control vector")
    if architecture != ARCHITECTURE:
        raise VectorFileError(
            f"{source}: general.architecture is '{str(architecture):.60}', not '{ARCHITECTURE}': "
            "this is not a control vector (a model file?)"
        )
    infos = _direction_infos(header, depth, num_layers is not None, source)
    if 0 in infos:
        # repeng's convention applies direction.0 to block 0; llama.cpp refuses it.
        warnings.warn(
            f"{source}: has direction.0, which llama.cpp rejects; it is read as block 0's direction",
            UserWarning,
            stacklevel=2,
        )
    if num_layers is None:
        num_layers = max(infos) + 1
    hidden = next(iter(infos.values())).shape[0]
    rows = torch.zeros(num_layers, hidden)
    for block, info in infos.items():
        rows[block] = _read_direction(file, header, info, block, source)
    check_magnitudes(rows, torch.ones(num_layers), None, scales_measured=False, source=source)
    file_name = header.fields.get(KEY_NAME)
    metadata = {
        "name": name or (file_name if isinstance(file_name, str) and file_name else file.stem),
        "model_name": "",
        "model_type": model_type
        if model_type is not None
        else _model_type(header.fields.get(KEY_MODEL_HINT)),
        "method": "gguf",
        "extraction_site": "block",
        "injection_mode": "add",
        "injection_site": "block",
        "num_demos": 0,
        "demos_sha256": "",
        "prompt_template": "",
        "recommended_strength": 1.0,
        "layers": sorted(infos),
    }
    # What llama.cpp adds is the shift itself: both additive scales give the same push.
    return InContextVector(rows, metadata, torch.ones(num_layers), shifts=rows)


def pad_layers(vector: InContextVector, num_layers: int) -> InContextVector:
    """An imported control vector padded with zero rows to a model of ``num_layers`` layers.

    Only for vectors whose depth was guessed on import (``method="gguf"``, with the
    covered layers recorded); any other vector's layer count is its model's.
    """
    m = vector.metadata
    if m["method"] != "gguf" or m["layers"] is None or num_layers < vector.num_layers:
        raise OptionError(f"vector '{vector.name}' cannot be padded to {num_layers} layers")
    extra = num_layers - vector.num_layers
    rows = torch.cat([vector.directions, torch.zeros(extra, vector.hidden_size)])
    shifts = (
        None if vector.shifts is None else torch.cat([vector.shifts, torch.zeros(extra, vector.hidden_size)])
    )
    scales = torch.cat([vector.layer_scales, torch.ones(extra)])
    kept = {k: v for k, v in m.items() if k not in ("hidden_size", "num_layers")}
    return InContextVector(rows, kept, scales, shifts)


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the GGUF magic (cheap: reads four bytes)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False
