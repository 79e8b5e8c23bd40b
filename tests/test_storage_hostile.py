"""Vector files are untrusted input: every malformed file gives a VectorFileError, nothing else.

Each case goes through the real loader and lets any other exception type fail
the test.  ``tests/data/hostile-*.safetensors`` are inputs that once broke the
loader (hang, memory blow-up or a foreign exception); they stay as regressions.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv import storage
from icv.metadata import FORMAT_VERSION, SCHEMA

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def good() -> bytes:
    """The bytes of a real small vector file (extracted from the tiny llama)."""
    vector = icv.extract(tiny_model("llama"), ByteTokenizer(), DEMOS, name="good")
    return storage.to_bytes(vector)


def split(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: object, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def edited(data: bytes, edit) -> bytes:
    header, body = split(data)
    edit(header)
    return join(header, body)


def load(data: bytes) -> icv.InContextVector | icv.VectorFileError:
    """The loader's verdict on ``data``; any exception other than VectorFileError escapes."""
    try:
        return icv.InContextVector(*storage.from_bytes(data, source="case"))
    except icv.VectorFileError as error:
        return error


def refused(data: bytes, match: str | None = None) -> icv.VectorFileError:
    verdict = load(data)
    assert isinstance(verdict, icv.VectorFileError), "a malformed file was accepted"
    if match is not None:
        assert match in str(verdict), str(verdict)
    return verdict


def assert_valid(vector: icv.InContextVector) -> None:
    assert vector.directions.shape == (vector.num_layers, vector.hidden_size)
    assert bool(torch.isfinite(vector.directions).all()) and bool(torch.isfinite(vector.layer_scales).all())


# -- whole files -------------------------------------------------------------------------


def test_the_good_file_loads(good):
    vector = load(good)
    assert isinstance(vector, icv.InContextVector) and vector.name == "good"


def test_truncation_at_every_offset_is_refused(good):
    for end in range(len(good)):
        refused(good[:end])


def test_empty_and_random_bytes(tmp_path):
    rng = torch.Generator().manual_seed(0)
    refused(b"", "too short")
    for size in (1, 7, 8, 9, 64, 4096):
        for _ in range(20):
            refused(bytes(torch.randint(0, 256, (size,), generator=rng).tolist()))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(icv.VectorFileError, match="too short"):
        icv.InContextVector.load(tmp_path / "empty.safetensors")


def test_every_single_byte_flip_is_either_harmless_or_refused(good):
    for index in range(len(good)):
        for xor in (0x01, 0x80, 0xFF):
            mutated = bytearray(good)
            mutated[index] ^= xor
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a flip may rename a key: "unknown key" warning
                verdict = load(bytes(mutated))
            if isinstance(verdict, icv.InContextVector):
                assert_valid(verdict)
                # Only a flip inside the tensor data or a free-text field can load.
                assert index >= 8


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 2**40, storage.MAX_HEADER_BYTES + 1])
def test_absurd_header_length_allocates_nothing(good, length):
    data = struct.pack("<Q", length) + good[8:]
    tracemalloc.start()
    try:
        refused(data, f"header length {length}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_length_one_past_the_end(good):
    header, body = split(good)
    raw = json.dumps(header).encode()
    refused(struct.pack("<Q", len(raw) + len(body) + 1) + raw + body, "does not fit")


@pytest.mark.parametrize(
    "raw", [b"{", b"not json", b"\xff\xfe{}", b"{'a': 1}", b'{"a": 1,}', b"[" * 5000, b"1" * 5000]
)
def test_invalid_json_header(good, raw):
    refused(join(raw, split(good)[1]), "not valid JSON")


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null", b"true"])
def test_header_that_is_not_an_object(good, raw):
    refused(join(raw, split(good)[1]), "not a JSON object")


def test_header_without_icv_metadata(good):
    refused(edited(good, lambda h: h.pop("__metadata__")), "no icv metadata")
    refused(edited(good, lambda h: h.update(__metadata__=["x"])), "no icv metadata")


# -- metadata ----------------------------------------------------------------------------

GARBAGE = [
    "",
    "x",
    "[]",
    "{}",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "NaN",
    "Infinity",
    "1.5",
    '"text"',
    "9" * 400,
    "9" * 5000,
    "[" * 5000,
    "\x00",
    "\ud800",
]


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_missing_metadata_field(good, key):
    data = edited(good, lambda h: h["__metadata__"].pop(key))
    verdict = load(data)
    if not SCHEMA[key][1]:  # optional fields (added after format 1 began, or None-able)
        assert isinstance(verdict, icv.InContextVector)
    else:
        assert isinstance(verdict, icv.VectorFileError) and key in str(verdict)


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_garbage_metadata_values(good, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in GARBAGE:
            verdict = load(edited(good, lambda h, value=value: h["__metadata__"].__setitem__(key, value)))
            if isinstance(verdict, icv.InContextVector):
                assert_valid(verdict)
                assert (
                    SCHEMA[key][0] is str
                    or key == "recommended_strength"
                    or (key in ("layers", "calibrated_with_demos", "training") and value == "null")
                    or (key in ("num_demos", "calibrated_with_demos") and value.isdigit())
                )
            elif isinstance(verdict, icv.FormatVersionError):
                assert key == "icv_format_version" and "format version 9" in str(verdict)
            else:
                assert key in str(verdict) or "tensor" in str(verdict), str(verdict)


@pytest.mark.parametrize("value", [1, 1.5, None, [], {"a": "b"}, True])
def test_metadata_values_that_are_not_strings(good, value):
    refused(edited(good, lambda h: h["__metadata__"].__setitem__("name", value)), "not a string")


def test_absurd_layer_count_allocates_nothing(good):
    data = edited(good, lambda h: h["__metadata__"].update(num_layers=str(10**12)))
    tracemalloc.start()
    try:
        refused(data, "1000000000000 layers")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_absurd_hidden_size(good):
    refused(edited(good, lambda h: h["__metadata__"].update(hidden_size=str(10**15))), "bytes of tensor data")


def test_shift_tensors_are_all_or_none(good):
    def drop_one(header):
        header.pop("shift.1")

    refused(edited(good, drop_one), "tensors")
    # Format 1 had no shift tensors: a format-1 header over a file with them is refused.
    refused(edited(good, lambda h: h["__metadata__"].update(icv_format_version="1")), "tensors")


def test_newer_format_version_is_refused_by_name(good):
    newer = FORMAT_VERSION + 1
    error = refused(edited(good, lambda h: h["__metadata__"].update(icv_format_version=str(newer))))
    assert isinstance(error, icv.FormatVersionError)
    assert f"version {newer}" in str(error) and "upgrade" in str(error)


def test_newer_format_version_is_named_even_if_other_fields_changed(good):
    def future(header):
        header["__metadata__"] = {"icv_format_version": "7", "hidden_size": "[32]"}

    error = refused(edited(good, future))
    assert isinstance(error, icv.FormatVersionError) and "version 7" in str(error)


def test_unknown_metadata_keys_warn_and_load(good):
    data = edited(good, lambda h: h["__metadata__"].update(colour="blue", future_key="[1, 2]"))
    with pytest.warns(UserWarning, match="colour, future_key"):
        vector = load(data)
    assert isinstance(vector, icv.InContextVector)
    assert "colour" not in vector.metadata and vector.name == "good"


# -- the tensor table --------------------------------------------------------------------


def _set(name, field, value):
    return lambda h: h[name].__setitem__(field, value)


LIES = {
    "shape too long": (_set("direction.0", "shape", [33]), "shape"),
    "shape 2-d": (_set("direction.0", "shape", [32, 1]), "shape"),
    "shape not a list": (_set("direction.1", "shape", "32"), "shape"),
    "scales shape": (_set("layer_scales", "shape", [4]), "shape"),
    "dtype F16": (_set("direction.0", "dtype", "F16"), "F32"),
    "dtype BF16": (_set("layer_scales", "dtype", "BF16"), "F32"),
    "dtype garbage": (_set("direction.2", "dtype", ["F32"]), "F32"),
    "offsets past the end": (_set("direction.2", "data_offsets", [384, 10**9]), "offsets"),
    "offsets reversed": (_set("direction.0", "data_offsets", [128, 0]), "offsets"),
    "offsets negative": (_set("direction.0", "data_offsets", [-128, 0]), "offsets"),
    "offsets floats": (_set("direction.0", "data_offsets", [0.0, 128.0]), "offsets"),
    "offsets booleans": (_set("layer_scales", "data_offsets", [False, True]), "offsets"),
    "offsets strings": (_set("direction.0", "data_offsets", ["0", "128"]), "offsets"),
    "offsets one": (_set("direction.0", "data_offsets", [0]), "offsets"),
    "offsets missing": (lambda h: h["direction.0"].pop("data_offsets"), "fields"),
    "offsets huge ints": (_set("direction.0", "data_offsets", [10**30, 10**30 + 128]), "offsets"),
    "offsets overlap": (_set("direction.1", "data_offsets", [0, 128]), "overlaps"),
    "extra field": (_set("direction.0", "junk", float("nan")), "fields"),
    "entry not an object": (lambda h: h.__setitem__("direction.0", [0, 128]), "should be F32"),
    "entry null": (lambda h: h.__setitem__("layer_scales", None), "should be F32"),
}


@pytest.mark.parametrize("case", sorted(LIES))
def test_tensor_entries_that_lie(good, case):
    edit, match = LIES[case]
    refused(edited(good, edit), match)


def test_swapped_offsets_load_the_swapped_data(good):
    """Offsets are honoured exactly: swapping two tensors' spans swaps their values."""
    original = load(good)
    header, body = split(good)
    header["direction.0"]["data_offsets"], header["direction.1"]["data_offsets"] = (
        header["direction.1"]["data_offsets"],
        header["direction.0"]["data_offsets"],
    )
    swapped = load(join(header, body))
    assert torch.equal(swapped.directions[0], original.directions[1])
    assert torch.equal(swapped.directions[1], original.directions[0])


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h.__setitem__("direction.3", h.pop("direction.0")), "missing ['direction.0']"),
        (lambda h: h.__setitem__("Direction.0", h.pop("direction.0")), "unexpected ['Direction.0']"),
        (lambda h: h.__setitem__("layer_scale", h.pop("layer_scales")), "missing ['layer_scales']"),
        (lambda h: h.pop("direction.2"), "lists 6"),
        (lambda h: h.__setitem__("extra", {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}), "lists 8"),
        (lambda h: h.__setitem__("shift.3", h.pop("shift.0")), "tensors"),
    ],
)
def test_wrong_tensor_names(good, edit, match):
    refused(edited(good, edit), match)


def test_trailing_or_missing_tensor_bytes(good):
    header, body = split(good)
    refused(join(header, body + b"\0\0\0\0"), "bytes of tensor data")
    refused(join(header, body[:-4]), "bytes of tensor data")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["direction", "scales", "shift"])
def test_nan_and_inf_values(good, value, where):
    header, body = split(good)
    name = {"direction": "direction.1", "scales": "layer_scales", "shift": "shift.2"}[where]
    start = header[name]["data_offsets"][0] + 4
    patched = body[:start] + struct.pack("<f", value) + body[start + 4 :]
    refused(join(header, patched), "NaN or infinite")


# -- paths -------------------------------------------------------------------------------


def test_a_directory(tmp_path):
    with pytest.raises(icv.VectorFileError, match="directory"):
        icv.InContextVector.load(tmp_path)


def test_missing_file_and_parent_that_is_a_file(tmp_path):
    with pytest.raises(icv.VectorFileError, match="cannot read"):
        icv.InContextVector.load(tmp_path / "missing.safetensors")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(icv.VectorFileError, match="cannot read"):
        icv.InContextVector.load(tmp_path / "plain" / "v.safetensors")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_a_file_without_read_permission(tmp_path, good):
    path = tmp_path / "locked.safetensors"
    path.write_bytes(good)
    path.chmod(0)
    try:
        with pytest.raises(icv.VectorFileError, match="ermission denied"):
            icv.InContextVector.load(path)
    finally:
        path.chmod(0o600)


def test_permission_denied_by_the_system(tmp_path, good, monkeypatch):
    """Works as root too: the OS's refusal is simulated where the loader opens the file."""
    path = tmp_path / "v.safetensors"
    path.write_bytes(good)

    def deny(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(storage.os, "open", deny)
    with pytest.raises(icv.VectorFileError, match="Permission denied"):
        icv.InContextVector.load(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(icv.VectorFileError, match="not a regular file"):
        icv.InContextVector.load(fifo)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_does_not_blow_up():
    with pytest.raises(icv.VectorFileError, match="not a regular file"):
        icv.InContextVector.load("/dev/zero")


@pytest.mark.parametrize("path", ["bad\0name.safetensors", 3, None, b"\xff\0"])
def test_paths_that_are_not_paths(path):
    with pytest.raises(icv.VectorFileError):
        icv.InContextVector.load(path)


def test_too_large_file_is_refused_without_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.safetensors"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setattr(storage, "MAX_FILE_BYTES", 32)
    with pytest.raises(icv.VectorFileError, match="too large"):
        icv.InContextVector.load(path)


# -- regressions -------------------------------------------------------------------------


def test_regression_inputs_are_refused():
    cases = sorted(DATA.glob("hostile-*.safetensors"))
    assert cases, "the regression inputs are missing"
    for case in cases:
        with pytest.raises(icv.VectorFileError):
            icv.InContextVector.load(case)


# -- property-based fuzzing ----------------------------------------------------------------

_GOOD: list[bytes] = []


def good_bytes() -> bytes:
    if not _GOOD:
        vector = icv.extract(tiny_model("llama"), ByteTokenizer(), DEMOS[:3], name="fuzz")
        _GOOD.append(storage.to_bytes(vector))
    return _GOOD[0]


def _flip(data: bytes, draw) -> bytes:
    index = draw(st.integers(0, len(data) - 1))
    out = bytearray(data)
    out[index] = draw(st.integers(0, 255))
    return bytes(out)


def _truncate(data: bytes, draw) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


def _insert(data: bytes, draw) -> bytes:
    index = draw(st.integers(0, len(data)))
    return data[:index] + draw(st.binary(min_size=1, max_size=16)) + data[index:]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _edit_header(data: bytes, draw) -> bytes:
    header, body = split(data)
    section = draw(st.sampled_from(sorted(header)))
    entry = header[section]
    field = draw(st.sampled_from(sorted(entry) + ["new"]))
    if section == "__metadata__" and draw(st.booleans()):
        entry[field] = draw(st.text(max_size=12) | JSON_VALUES.map(json.dumps))
    elif draw(st.booleans()):
        entry[field] = draw(JSON_VALUES)
    else:
        entry.pop(field, None)
    return join(header, body)


BYTE_MUTATIONS = [_flip, _truncate, _insert]


@st.composite
def mutated_files(draw) -> bytes:
    """A valid file with up to two header edits, then up to three byte-level mutations."""
    data = good_bytes()
    for _ in range(draw(st.integers(0, 2))):
        data = _edit_header(data, draw)
    for _ in range(draw(st.integers(0 if data != good_bytes() else 1, 3))):
        if not data:
            break
        data = draw(st.sampled_from(BYTE_MUTATIONS))(data, draw)
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_fuzz_mutated_files_load_or_raise_vector_file_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = load(data)
    if isinstance(verdict, icv.InContextVector):
        assert_valid(verdict)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data):
    verdict = load(data)
    assert isinstance(verdict, icv.VectorFileError)
