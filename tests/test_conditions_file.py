"""Condition files: their own kind of safetensors file, read as defensively as vector files.

Every input loads as a valid condition or raises :class:`icv.VectorFileError`; a
vector file given to the condition loader, and a condition file given to the vector
loader (or ``icv.steer``), say what they are.
"""

from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import icv
from icv import condition as condition_file, storage
from icv.condition import Condition

META = dict(
    name="toxic", model_name="tiny-llama", model_type="llama", layer=1, threshold=0.25, comparison=">"
)


@pytest.fixture(scope="module")
def cond():
    torch.manual_seed(0)
    confusion = {"tp": 3, "fp": 1, "tn": 2, "fn": 0}
    return Condition(
        torch.randn(3, 8), {**META, "f1": 0.857, "confusion": confusion, "layer_f1": [0.5, 0.857, 0.6]}
    )


@pytest.fixture(scope="module")
def good(cond):
    return condition_file.to_bytes(cond)


def load(data: bytes) -> Condition:
    return condition_file.from_bytes(data, source="test")


def edited(data: bytes, edit) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def test_round_trip(cond, tmp_path):
    path = tmp_path / "toxic.condition.safetensors"
    cond.save(path)
    back = Condition.load(path)
    assert torch.equal(back.directions, cond.directions)
    assert back.metadata == cond.metadata
    with pytest.raises(icv.VectorExistsError):
        cond.save(path)
    cond.save(path, overwrite=True)


def test_the_kinds_refuse_each_other(cond, tmp_path):
    from tiny import DEMOS, ByteTokenizer, tiny_model

    cond.save(tmp_path / "c.safetensors")
    vec = icv.extract(tiny_model("llama"), ByteTokenizer(), DEMOS)
    vec.save(tmp_path / "v.safetensors")
    with pytest.raises(icv.VectorFileError, match="is an icv condition.*when="):
        icv.InContextVector.load(tmp_path / "c.safetensors")
    with pytest.raises(icv.VectorFileError, match="is an icv steering vector, not a condition"):
        Condition.load(tmp_path / "v.safetensors")
    with pytest.raises(icv.VectorFileError):
        Condition.load(tmp_path / "missing.safetensors")
    with pytest.raises(icv.VectorFileError, match="directory"):
        Condition.load(tmp_path)


def test_truncation_at_every_offset_is_refused(good):
    for end in range(len(good)):
        with pytest.raises(icv.VectorFileError):
            load(good[:end])


def test_every_single_byte_flip_is_harmless_or_refused(good):
    for index in range(len(good)):
        for flip in (0x01, 0x80):
            data = bytearray(good)
            data[index] ^= flip
            try:
                back = load(bytes(data))
            except icv.VectorFileError:
                continue
            assert bool(torch.isfinite(back.directions).all()) and math_ok(back)


def math_ok(back: Condition) -> bool:
    import math

    return math.isfinite(back.threshold) and 0 <= back.layer < back.num_layers


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("threshold", "NaN", "finite"),
        ("threshold", "Infinity", "finite"),
        ("threshold", "1e999", "finite"),
        ("layer", "3", "out of range"),
        ("layer", "-1", "out of range"),
        ("layer", "1.0", "should be int"),
        ("comparison", "!=", "comparison"),
        ("positions", "last_token", "positions"),
        ("num_layers", "1000000", "tensors|larger|per layer"),
        ("hidden_size", "99999999", "larger"),
        ("f1", "1.5", "f1"),
        ("confusion", '{"tp": -1, "fp": 0, "tn": 0, "fn": 0}', "confusion"),
        ("confusion", '{"tp": 1}', "confusion"),
        ("layer_f1", "[0.5]", "layer_f1"),
        ("layer_f1", "[" * 5000, "JSON"),
        ("icv_format_version", "2", "newer|version"),
        ("icv_format_version", "0", "version"),
        ("icv_kind", "vector", "not an icv condition"),
    ],
)
def test_bad_metadata_in_the_file_is_refused(good, key, value, match):
    def edit(header):
        header["__metadata__"][key] = value

    with pytest.raises(icv.VectorFileError, match=match):
        load(edited(good, edit))


def test_a_newer_format_is_named(good):
    def edit(header):
        header["__metadata__"]["icv_format_version"] = "7"

    with pytest.raises(icv.FormatVersionError, match="upgrade"):
        load(edited(good, edit))


@pytest.mark.parametrize("key", ["layer", "threshold", "comparison", "model_type", "icv_kind"])
def test_missing_required_metadata_is_refused(good, key):
    def edit(header):
        del header["__metadata__"][key]

    with pytest.raises(icv.VectorFileError):
        load(edited(good, edit))


def test_tensor_tables_that_lie_are_refused(good):
    cases = [
        lambda h: h.update({"direction.3": h["direction.0"]}),
        lambda h: h.pop("direction.2"),
        lambda h: h["direction.0"].update({"dtype": "F16"}),
        lambda h: h["direction.0"].update({"shape": [9]}),
        lambda h: h["direction.0"].update({"data_offsets": [0, 4]}),
        lambda h: h["direction.1"].update({"data_offsets": h["direction.0"]["data_offsets"]}),
        lambda h: h.update({"direction.x": h.pop("direction.2")}),
    ]
    for case in cases:
        with pytest.raises(icv.VectorFileError):
            load(edited(good, case))


def test_nan_in_a_direction_is_refused(good):
    data = bytearray(good)
    data[-4:] = struct.pack("<f", float("nan"))
    with pytest.raises(icv.VectorFileError, match="finite"):
        load(bytes(data))


_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=4),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([*condition_file._SCHEMA, "format", "extra"]), value=_VALUES, raw=st.booleans())
def test_any_metadata_value_loads_validly_or_is_refused(good, key, value, raw):
    """The property the fuzzer checks (tests/fuzz/fuzz_load.py), on the metadata fields."""

    def edit(header):
        if value is None:
            header["__metadata__"].pop(key, None)
        else:
            header["__metadata__"][key] = value if raw else json.dumps(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            back = load(edited(good, edit))
        except icv.VectorFileError:
            return
    assert math_ok(back) and back.comparison in (">", "<")


def test_steering_refuses_a_condition_file_given_as_vector(tmp_path, cond):
    cond.save(tmp_path / "c.safetensors")
    with pytest.raises(icv.VectorFileError, match="condition"):
        storage.load_vector(tmp_path / "c.safetensors")
