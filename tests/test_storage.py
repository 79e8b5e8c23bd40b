"""Vector files: exact round trip, self-description, atomic and careful saving."""

import json
import struct

import pytest
import torch

import icv


@pytest.fixture
def vec(llama, tokenizer, demos):
    return icv.extract(llama, tokenizer, demos, name="positive", recommended_strength=0.07)


def header_of(path):
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length])


def test_round_trip_is_exact(vec, tmp_path):
    path = tmp_path / "v.safetensors"
    vec.save(path)
    back = icv.InContextVector.load(path)
    assert back.equal(vec)
    assert back.recommended_strength == 0.07


def test_file_describes_itself(vec, tmp_path):
    path = tmp_path / "v.safetensors"
    vec.save(path)
    header = header_of(path)
    meta = header["__metadata__"]
    assert meta["format"] == "pt"
    assert meta["model_type"] == "llama" and meta["num_layers"] == "3" and meta["hidden_size"] == "32"
    assert meta["icv_format_version"] == "2" and meta["method"] == "pca"
    assert meta["recommended_strength"] == "0.07" and len(meta["demos_sha256"]) == 64
    assert (meta["preset"], meta["text_cleaning"], meta["pca_sign"], meta["layers"]) == (
        "",
        "none",
        "mean",
        "null",
    )
    assert sorted(k for k in header if k != "__metadata__") == [
        "direction.0",
        "direction.1",
        "direction.2",
        "layer_scales",
        "shift.0",
        "shift.1",
        "shift.2",
    ]
    assert header["direction.1"]["shape"] == [32] and header["direction.1"]["dtype"] == "F32"
    assert header["shift.1"]["shape"] == [32] and header["shift.1"]["dtype"] == "F32"


def _format_1_file(vec, path):
    """A file as version 0.1.0 wrote it: directions and layer scales, format 1 metadata."""
    from safetensors.torch import save_file

    old_keys = (
        "icv_format_version",
        "library_version",
        "name",
        "model_name",
        "model_type",
        "hidden_size",
        "num_layers",
        "method",
        "extraction_site",
        "injection_mode",
        "injection_site",
        "num_demos",
        "demos_sha256",
        "prompt_template",
        "recommended_strength",
    )
    metadata = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in vec.metadata.items() if k in old_keys
    }
    metadata["icv_format_version"] = "1"
    tensors = {f"direction.{l}": row.clone() for l, row in enumerate(vec.directions)}
    tensors["layer_scales"] = vec.layer_scales.clone()
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})


def test_format_1_files_still_load_with_the_shift_unknown(vec, tmp_path, llama):
    _format_1_file(vec, tmp_path / "old.safetensors")
    old = icv.InContextVector.load(tmp_path / "old.safetensors")
    assert torch.equal(old.directions, vec.directions) and torch.equal(old.layer_scales, vec.layer_scales)
    assert old.shifts is None and old.shift_norms() is None
    assert (old.metadata["preset"], old.metadata["text_cleaning"], old.metadata["pca_sign"]) == (
        "",
        "none",
        "mean",
    )
    with icv.steer(llama, old, 0.05):  # everything but the shift's size works
        pass
    with pytest.raises(icv.OptionError, match="does not know its shift's size.*re-extract"):
        icv.steer(llama, old, 1.0, mode="add", scale="shift")
    old.save(tmp_path / "again.safetensors")  # re-saved in the current format, still without shifts
    again = icv.InContextVector.load(tmp_path / "again.safetensors")
    assert header_of(tmp_path / "again.safetensors")["__metadata__"]["icv_format_version"] == "2"
    assert again.shifts is None and torch.equal(again.directions, vec.directions)


def test_refuses_to_overwrite_unless_asked(vec, tmp_path):
    path = tmp_path / "v.safetensors"
    vec.save(path)
    with pytest.raises(icv.VectorExistsError, match="overwrite=True"):
        (vec * 2).save(path)
    assert icv.InContextVector.load(path).equal(vec)
    (vec * 2).save(path, overwrite=True)
    assert torch.equal(icv.InContextVector.load(path).directions, vec.directions * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]  # no temp file left


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(icv.VectorFileError, match="cannot read"):
        icv.InContextVector.load(tmp_path / "missing.safetensors")
    with pytest.raises(icv.VectorFileError, match="directory"):
        icv.InContextVector.load(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(icv.VectorFileError, match="metadata"):
        icv.InContextVector.load(tmp_path / "other.safetensors")


def test_missing_folder(vec, tmp_path):
    with pytest.raises(icv.VectorFileError, match="does not exist"):
        vec.save(tmp_path / "nope" / "v.safetensors")


def test_saved_files_get_ordinary_permissions(vec, tmp_path):
    import os
    import stat

    from icv.gguf import export_gguf

    mask = os.umask(0o022)
    try:
        vec.save(tmp_path / "v.safetensors")
        with pytest.warns(UserWarning, match="block 0"):
            export_gguf(vec, tmp_path / "v.gguf")
    finally:
        os.umask(mask)
    for name in ("v.safetensors", "v.gguf"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def _gguf_model_file(path):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 2).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


WRONG_FILES = {
    # name: (writer, what the error must say)
    "demos.jsonl": (
        lambda p: p.write_text('{"source": "a", "target": "b"}\n'),
        ["JSON Lines demonstrations", "icv.read_demos("],
    ),
    "demos.json": (lambda p: p.write_text('[["a", "b"]]'), ["JSON array", "icv.read_demos("]),
    "demos.csv": (lambda p: p.write_text("bad food,good food\n"), ["CSV/TSV", "icv extract --demos"]),
    "notes.txt": (lambda p: p.write_text("hello\n"), ["a text file"]),
    "blank.safetensors": (lambda p: p.write_text("\n\n"), ["blank lines"]),
    "model.safetensors": (
        lambda p: __import__("safetensors.torch").torch.save_file(
            {"model.layers.0.mlp.weight": torch.zeros(2)}, str(p)
        ),
        ["a model's weights", "icv.load_model("],
    ),
    "model.pt": (lambda p: torch.save({"w": torch.zeros(2)}, p), ["zip archive", "torch.save"]),
    "old.pt": (
        lambda p: torch.save({"w": 1}, p, _use_new_zipfile_serialization=False),
        ["a pickle", "never unpickles"],
    ),
    "model.gguf": (_gguf_model_file, ["a GGUF model", "icv.load_model("]),
}


@pytest.mark.parametrize("name", sorted(WRONG_FILES))
def test_loading_another_kind_of_file_says_what_it_is(tmp_path, name):
    write, expected = WRONG_FILES[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(icv.VectorFileError) as caught:
        icv.InContextVector.load(path)
    message = str(caught.value)
    assert message.startswith(f"'{path}' is ") and all(text in message for text in expected), message


def test_loading_a_gguf_control_vector_names_import_gguf(vec, tmp_path):
    pytest.importorskip("gguf")
    path = tmp_path / "v.gguf"
    with pytest.warns(UserWarning):  # block 0 dropped
        icv.export_gguf(vec, path)
    with pytest.raises(icv.VectorFileError, match=r"a GGUF control vector: read it with icv.import_gguf\("):
        icv.InContextVector.load(path)
    assert icv.import_gguf(path).num_layers == vec.num_layers  # the top-level name works


def test_a_damaged_vector_file_keeps_its_own_error(vec, tmp_path):
    path = tmp_path / "v.safetensors"
    vec.save(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(icv.VectorFileError, match="truncated or altered"):
        icv.InContextVector.load(path)
