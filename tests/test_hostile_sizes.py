"""Sizes a file declares never decide an allocation: hostile GGUF control vectors, in the library and at the server.

A few hundred bytes that declare a block index of a million, a trillion tensors, a
tensor of 2^40 values or an array of two million strings are refused before any memory
is allocated from what they declare: quickly, and with the process's peak memory
(``VmHWM``, reset through ``/proc/self/clear_refs``) growing by less than 50 MB.
"""

from __future__ import annotations

import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from tiny import LAYERS

from icv.errors import VectorFileError
from icv.gguf import import_gguf
from icv.storage import MAX_HIDDEN, MAX_LAYERS

gguf = pytest.importorskip("gguf")

MB = 1 << 20
WIDE = 1536  # the old reader allocated zeros(block + 1, width): 6 GB for direction.1000000


def status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@contextmanager
def bounded(max_growth_bytes: int = 50 * MB, max_seconds: float = 1.0):
    """The block's peak memory growth and time stay under the bounds (Linux: /proc/self)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pytest.skip("peak memory needs a writable /proc/self/clear_refs (Linux)")
    before = status_kb("VmRSS") * 1024
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    growth = status_kb("VmHWM") * 1024 - before
    assert growth < max_growth_bytes, f"peak memory grew by {growth / MB:.0f} MB"
    assert seconds < max_seconds, f"took {seconds:.2f} s"


def control_vector(path: Path, tensors: dict[str, np.ndarray], *, endianess=None) -> Path:
    kwargs = {} if endianess is None else {"endianess": endianess}
    writer = gguf.GGUFWriter(str(path), "controlvector", **kwargs)
    writer.add_string("controlvector.model_hint", "llama")
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def handmade(path: Path, *, tensors: int, fields: bytes, field_count: int, infos: bytes = b"") -> Path:
    """A GGUF file written byte by byte, declaring whatever counts it is told to."""
    path.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, tensors, field_count) + fields + infos)
    return path


ARCH = _string("general.architecture") + struct.pack("<I", 8) + _string("controlvector")


def tensor_info(name: str, shape: tuple[int, ...], kind: int = 0, offset: int = 0) -> bytes:
    dims = b"".join(struct.pack("<Q", n) for n in shape)
    return _string(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", kind, offset)


@pytest.mark.parametrize("block", [1_000_000, 1_099_511_627_776])
def test_a_block_past_any_model_is_refused_before_allocating(tmp_path, block):
    path = control_vector(tmp_path / "b.gguf", {f"direction.{block}": np.ones(WIDE, np.float32)})
    assert path.stat().st_size < 8 * 1024
    with bounded():
        with pytest.raises(VectorFileError, match=f"at most {MAX_LAYERS} layers"):
            import_gguf(path)
    with bounded():
        with pytest.raises(VectorFileError, match="the model has 30 layers"):
            import_gguf(path, num_layers=30)


def test_a_block_past_the_models_depth_is_refused(tmp_path):
    path = control_vector(tmp_path / "d.gguf", {"direction.30": np.ones(8, np.float32)})
    with pytest.raises(VectorFileError, match=r"direction.30 but the model has 30 layers \(0 .. 29\)"):
        import_gguf(path, num_layers=30)
    assert import_gguf(path, num_layers=31).num_layers == 31


def test_absurd_declared_counts_and_widths_are_refused_from_the_header(tmp_path):
    cases = {
        "tensors": handmade(tmp_path / "t.gguf", tensors=2**40, fields=ARCH, field_count=1),
        "metadata fields": handmade(tmp_path / "f.gguf", tensors=0, fields=ARCH, field_count=2**62),
        "values": handmade(
            tmp_path / "w.gguf",
            tensors=1,
            fields=ARCH,
            field_count=1,
            infos=tensor_info("direction.1", (2**40,)),
        ),
        "bytes long": handmade(
            tmp_path / "n.gguf", tensors=1, fields=ARCH, field_count=1, infos=struct.pack("<Q", 2**60)
        ),
        "dimensions": handmade(
            tmp_path / "dims.gguf",
            tensors=1,
            fields=ARCH,
            field_count=1,
            infos=_string("direction.1") + struct.pack("<I", 2**31),
        ),
    }
    for what, path in cases.items():
        with bounded():
            with pytest.raises(VectorFileError, match=what):
                import_gguf(path)


def test_a_huge_metadata_array_is_refused_before_it_is_walked(tmp_path):
    # gguf-py's reader built 3 GB of objects in 73 s for this 16 MB file.
    items = 2_000_000
    array = _string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, items) + struct.pack("<Q", 0) * items
    path = handmade(tmp_path / "a.gguf", tensors=0, fields=ARCH + array, field_count=2)
    assert path.stat().st_size > 15 * MB
    with bounded():
        with pytest.raises(VectorFileError, match="2000000 items"):
            import_gguf(path)


def test_a_wide_tensor_must_lie_inside_the_file(tmp_path):
    # Declares 2^20 values, holds none: refused before reading, as is a width no model has.
    short = handmade(
        tmp_path / "s.gguf",
        tensors=1,
        fields=ARCH,
        field_count=1,
        infos=tensor_info("direction.1", (1 << 20,)),
    )
    with pytest.raises(VectorFileError, match="values; models are at most"):
        import_gguf(short)
    fits = handmade(
        tmp_path / "f.gguf",
        tensors=1,
        fields=ARCH,
        field_count=1,
        infos=tensor_info("direction.1", (MAX_HIDDEN,)),
    )
    with pytest.raises(VectorFileError, match="does not lie inside the file"):
        import_gguf(fits)


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"direction.\u00b2": np.ones(4, np.float32)}, "no valid layer index"),  # '²'.isdigit() is True
        ({"direction.1": np.ones(4, np.float32), "direction.01": np.ones(4, np.float32)}, "two tensors"),
    ],
)
def test_names_that_int_refuses_or_that_repeat_a_block(tmp_path, tensors, message):
    with pytest.raises(VectorFileError, match=message):
        import_gguf(control_vector(tmp_path / "x.gguf", tensors))


def test_a_big_endian_file_reads_as_its_little_endian_twin(tmp_path):
    values = {"direction.1": np.arange(4, dtype=np.float32), "direction.2": np.full(4, -2.5, np.float32)}
    little = import_gguf(control_vector(tmp_path / "le.gguf", values))
    # The writer swaps the header and the tensors' bytes for a big-endian file.
    big = import_gguf(control_vector(tmp_path / "be.gguf", values, endianess=gguf.GGUFEndian.BIG))
    assert (tmp_path / "be.gguf").read_bytes()[4:8] == struct.pack(">I", 3)
    assert big.directions.equal(little.directions)


# -- at the server: the upload route ---------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from serving_server import BackgroundServer
    from tiny import char_tokenizer, tiny_model

    from icv.serving import ModelShape, VectorLibrary

    model = tiny_model("llama")
    with BackgroundServer(
        model, char_tokenizer(), VectorLibrary(ModelShape.of(model)), max_tokens=8
    ) as running:
        yield running


@pytest.mark.parametrize("block", [1_000_000, 1_099_511_627_776])
def test_a_hostile_upload_is_a_4xx_within_a_second_in_bounded_memory(server, tmp_path, block):
    from serving_server import httpx

    data = control_vector(tmp_path / "b.gguf", {f"direction.{block}": np.ones(WIDE, np.float32)}).read_bytes()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        http.get("/health").raise_for_status()  # connected and warm before measuring
        with bounded():
            response = http.post(
                "/v1/vectors/upload",
                params={"name": f"hostile-{block}", "filename": "b.gguf"},
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert f"direction.{block} but the model has {LAYERS} layers" in error["message"], error
        assert error["code"] == "invalid_vector_file" and "/" not in error["message"], error
        assert http.get("/health").status_code == 200
