"""GGUF control vectors: llama.cpp's layout out, files from llama.cpp / repeng / EasySteer in."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import icv
from icv.errors import ModelMismatchError, OptionError, VectorExistsError, VectorFileError
from icv.gguf import additive_deltas, export_gguf, export_strength, import_gguf, is_gguf_file
from icv.strength import default_strength

gguf = pytest.importorskip("gguf")


@pytest.fixture
def vector(llama, tokenizer, demos):
    return icv.extract(llama, tokenizer, demos, name="warm")


def write_control_vector(
    path, tensors, *, arch="controlvector", hint="llama", layer_count=None, signed=False
):
    """A file the way repeng (uint32 layer_count) or llama.cpp's cvector-generator (int32) write it."""
    writer = gguf.GGUFWriter(str(path), arch)
    if hint is not None:
        writer.add_string(f"{arch}.model_hint", hint)
    count = len(tensors) if layer_count is None else layer_count
    (writer.add_int32 if signed else writer.add_uint32)(f"{arch}.layer_count", count)
    for name, values in tensors.items():
        writer.add_tensor(name, np.asarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_layout(path):
    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        last = field.parts[-1]
        fields[key] = (
            bytes(last).decode() if field.types[0] == gguf.GGUFValueType.STRING else last.tolist()[0]
        )
    tensors = {
        t.name: (int(t.tensor_type), [int(n) for n in t.shape], np.array(t.data)) for t in reader.tensors
    }
    return fields, tensors


# -- export ---------------------------------------------------------------------------


def test_export_writes_llama_cpp_layout(vector, tmp_path):
    path = tmp_path / "v.gguf"
    with pytest.warns(UserWarning, match="block 0"):
        report = export_gguf(vector, path, strength=0.5)
    fields, tensors = read_layout(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == vector.num_layers - 1
    assert sorted(tensors) == [f"direction.{n}" for n in range(1, vector.num_layers)]
    expected = 0.5 * vector.layer_scales[:, None] * vector.directions
    for n in range(1, vector.num_layers):
        kind, shape, data = tensors[f"direction.{n}"]
        assert kind == int(gguf.GGMLQuantizationType.F32)
        assert shape == [vector.hidden_size]
        torch.testing.assert_close(torch.from_numpy(data), expected[n])
    assert report.blocks == tuple(range(1, vector.num_layers))
    assert report.dropped_block0 and report.strength == 0.5
    assert is_gguf_file(path)


def test_export_is_silent_when_block0_is_empty(vector, tmp_path):
    rows = vector.directions.clone()
    rows[0] = 0
    quiet = icv.InContextVector(rows, vector.metadata, vector.layer_scales)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = export_gguf(quiet, tmp_path / "v.gguf", strength=0.02)
    assert not report.dropped_block0


def test_export_strength_defaults(vector):
    guess = default_strength("add", vector.num_layers)
    with pytest.warns(icv.DefaultStrengthWarning, match=f"using {guess:g}"):
        assert export_strength(vector) == guess  # rotate@mlp: its strength is an angle
    with pytest.warns(icv.DefaultStrengthWarning):
        assert export_strength(vector.with_metadata(recommended_strength=0.3)) == guess
    additive = vector.with_metadata(injection_mode="add", injection_site="block", recommended_strength=0.3)
    assert export_strength(additive) == 0.3
    with pytest.warns(icv.DefaultStrengthWarning):
        assert export_strength(additive.with_metadata(recommended_strength=None)) == guess


def test_export_folds_the_recommended_additive_strength(vector, tmp_path):
    additive = vector.with_metadata(injection_mode="add", injection_site="block", recommended_strength=0.3)
    with pytest.warns(UserWarning):
        export_gguf(additive, tmp_path / "v.gguf")
    _, tensors = read_layout(tmp_path / "v.gguf")
    torch.testing.assert_close(torch.from_numpy(tensors["direction.2"][2]), additive_deltas(additive, 0.3)[2])
    torch.testing.assert_close(
        additive_deltas(additive, 0.3)[2], 0.3 * vector.layer_scales[2] * vector.directions[2]
    )


def test_export_refuses_bad_targets_and_options(vector, tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"keep me")
    with pytest.raises(VectorExistsError):
        export_gguf(vector, path)
    assert path.read_bytes() == b"keep me"
    with pytest.raises(VectorFileError, match="directory"):
        export_gguf(vector, tmp_path)
    with pytest.raises(VectorFileError, match="does not exist"):
        export_gguf(vector, tmp_path / "missing" / "v.gguf")
    with pytest.raises(OptionError, match="finite"):
        export_gguf(vector, tmp_path / "w.gguf", strength=float("nan"))
    one_layer = icv.InContextVector(torch.ones(1, 4), {**_gguf_metadata(), "model_type": "llama"})
    with pytest.raises(OptionError, match="block 1"):
        export_gguf(one_layer, tmp_path / "w.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["v.gguf"]  # no temp files left behind


def test_export_overwrites_when_asked(vector, tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"old")
    with pytest.warns(UserWarning):
        export_gguf(vector, path, overwrite=True)
    assert is_gguf_file(path)


def _gguf_metadata():
    return {
        "model_name": "",
        "method": "gguf",
        "extraction_site": "block",
        "injection_mode": "add",
        "injection_site": "block",
        "num_demos": 0,
        "demos_sha256": "",
        "prompt_template": "",
    }


# -- round trip -----------------------------------------------------------------------


def test_round_trip_gives_the_same_directions(vector, tmp_path):
    path = tmp_path / "v.gguf"
    with pytest.warns(UserWarning):
        export_gguf(vector, path, strength=0.25)
    back = import_gguf(path)
    expected = additive_deltas(vector, 0.25)
    assert back.num_layers == vector.num_layers and back.hidden_size == vector.hidden_size
    assert torch.equal(back.directions[1:], expected[1:])
    assert torch.equal(back.directions[0], torch.zeros(vector.hidden_size))
    assert torch.equal(back.layer_scales, torch.ones(vector.num_layers))
    m = back.metadata
    assert (m["injection_mode"], m["injection_site"], m["recommended_strength"]) == ("add", "block", 1.0)
    assert (m["model_type"], m["model_name"], m["method"], m["name"]) == ("llama", "", "gguf", "warm")
    # A second trip changes nothing: the file is a fixed point.
    again = tmp_path / "again.gguf"
    export_gguf(back, again)
    assert torch.equal(import_gguf(again).directions, back.directions)


def test_imported_vector_saves_as_icv_file(vector, tmp_path):
    with pytest.warns(UserWarning):
        export_gguf(vector, tmp_path / "v.gguf")
    back = import_gguf(tmp_path / "v.gguf")
    back.save(tmp_path / "v.safetensors")
    assert icv.InContextVector.load(tmp_path / "v.safetensors").equal(back)


# -- steering with an imported vector is llama.cpp's addition -------------------------


def _add_by_hand(model, rows):
    handles = []
    for block, layer in enumerate(model.model.layers):

        def hook(_module, _args, output, delta=rows[block]):
            if isinstance(output, torch.Tensor):
                return output + delta
            return (output[0] + delta, *output[1:])

        handles.append(layer.register_forward_hook(hook))
    return handles


def test_steering_an_imported_vector_adds_each_direction_to_its_block(vector, llama, tokenizer, tmp_path):
    with pytest.warns(UserWarning):
        export_gguf(vector, tmp_path / "v.gguf", strength=3.0)
    imported = import_gguf(tmp_path / "v.gguf")
    batch = tokenizer.batch(["the food was cold", "dirty room"])
    with torch.no_grad():
        plain = llama(**batch).logits
        with icv.steer(llama, imported):
            steered = llama(**batch).logits
        handles = _add_by_hand(llama, imported.directions)
        try:
            manual = llama(**batch).logits
        finally:
            for handle in handles:
                handle.remove()
        with icv.steer(llama, vector, 3.0, mode="add", site="block", layers=range(1, vector.num_layers)):
            original = llama(**batch).logits
        with icv.steer(llama, imported, strength=2.0):  # --control-vector-scaled FILE 2
            scaled = llama(**batch).logits
        handles = _add_by_hand(llama, 2.0 * imported.directions)
        try:
            manual_scaled = llama(**batch).logits
        finally:
            for handle in handles:
                handle.remove()
    assert not torch.allclose(plain, steered)
    torch.testing.assert_close(steered, manual, rtol=0, atol=1e-6)
    assert torch.equal(steered, original)  # the export folds exactly what add@block adds
    torch.testing.assert_close(scaled, manual_scaled, rtol=0, atol=1e-6)


def test_imported_vector_of_another_width_does_not_fit(llama, tmp_path):
    path = write_control_vector(
        tmp_path / "w.gguf", {"direction.1": np.ones(8, np.float32), "direction.2": np.ones(8, np.float32)}
    )
    with pytest.raises(ModelMismatchError):
        icv.steer(llama, import_gguf(path))


# -- files written by others ----------------------------------------------------------


def test_repeng_layout_loads(tmp_path):
    # repeng: directions for model.layers[1 .. n-1], layer_count = how many, hint = HF model_type.
    rng = np.random.default_rng(0)
    rows = {n: rng.standard_normal(32).astype(np.float32) for n in range(1, 3)}
    path = write_control_vector(tmp_path / "repeng.gguf", {f"direction.{n}": v for n, v in rows.items()})
    vector = import_gguf(path)
    assert vector.num_layers == 3 and vector.hidden_size == 32
    for n, values in rows.items():
        assert torch.equal(vector.directions[n], torch.from_numpy(values))
    assert torch.equal(vector.directions[0], torch.zeros(32))
    assert vector.name == "repeng" and vector.metadata["model_type"] == "llama"


def test_cvector_generator_layout_loads(tmp_path):
    # llama.cpp's cvector-generator: int32 layer_count, hint in llama.cpp's spelling.
    tensors = {f"direction.{n}": np.full(16, n, np.float32) for n in range(1, 30)}
    path = write_control_vector(tmp_path / "cv.gguf", tensors, hint="gptneox", signed=True)
    vector = import_gguf(path)
    assert vector.num_layers == 30
    assert vector.metadata["model_type"] == "gpt_neox"
    assert torch.equal(vector.directions[:, 0], torch.arange(30, dtype=torch.float32))


def test_partial_vector_needs_the_layer_count(tmp_path):
    # repeng with hidden_layers=[1, 2] on a 4-layer model: the file cannot tell the depth.
    path = write_control_vector(
        tmp_path / "p.gguf", {"direction.2": np.ones(4, np.float32), "direction.1": np.ones(4, np.float32)}
    )
    assert import_gguf(path).num_layers == 3
    vector = import_gguf(path, num_layers=4, model_type="qwen2", name="mine")
    assert vector.num_layers == 4 and torch.equal(vector.directions[3], torch.zeros(4))
    assert (vector.metadata["model_type"], vector.name) == ("qwen2", "mine")
    with pytest.raises(VectorFileError, match="direction.2"):
        import_gguf(path, num_layers=2)
    with pytest.raises(OptionError):
        import_gguf(path, num_layers=0)


def test_missing_hint_means_any_model_type(tmp_path):
    path = write_control_vector(tmp_path / "h.gguf", {"direction.1": np.ones(4, np.float32)}, hint=None)
    assert import_gguf(path).metadata["model_type"] == ""


def test_direction_zero_is_read_with_a_warning(tmp_path):
    path = write_control_vector(
        tmp_path / "z.gguf",
        {"direction.0": np.full(4, 2.0, np.float32), "direction.1": np.ones(4, np.float32)},
    )
    with pytest.warns(UserWarning, match="direction.0"):
        vector = import_gguf(path)
    assert torch.equal(vector.directions[0], torch.full((4,), 2.0))


def test_other_tensors_are_skipped_with_a_warning(tmp_path):
    path = write_control_vector(
        tmp_path / "x.gguf", {"direction.1": np.ones(4, np.float32), "extra": np.ones(4, np.float32)}
    )
    with pytest.warns(UserWarning, match="extra"):
        vector = import_gguf(path)
    assert vector.num_layers == 2


# -- bad files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensors, arch, message",
    [
        ({"direction.1": np.ones(4, np.float16)}, "controlvector", "F32"),
        ({"direction.1": np.ones((2, 4), np.float32)}, "controlvector", "one dimension"),
        (
            {"direction.1": np.ones(4, np.float32), "direction.2": np.ones(5, np.float32)},
            "controlvector",
            "different lengths",
        ),
        ({"direction.1": np.array([1.0, np.nan], np.float32)}, "controlvector", "NaN"),
        ({"direction.1": np.array([1.0, np.inf], np.float32)}, "controlvector", "NaN or infinite"),
        ({"direction.x": np.ones(4, np.float32)}, "controlvector", "layer index"),
        ({"direction.-1": np.ones(4, np.float32)}, "controlvector", "layer index"),
        ({"blk.0.attn_q.weight": np.ones(4, np.float32)}, "controlvector", "no direction"),
        ({}, "controlvector", "no direction"),
        ({"token_embd.weight": np.ones(4, np.float32)}, "llama", "not a control vector"),
    ],
)
def test_bad_control_vectors_are_refused(tmp_path, tensors, arch, message):
    path = write_control_vector(tmp_path / "bad.gguf", tensors, arch=arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VectorFileError, match=message):
            import_gguf(path)


def test_files_that_are_not_gguf_are_refused(tmp_path, vector):
    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a GGUF file at all\n")
    with pytest.raises(VectorFileError, match="not a valid GGUF"):
        import_gguf(text)
    truncated = tmp_path / "cut.gguf"
    with pytest.warns(UserWarning):
        export_gguf(vector, tmp_path / "whole.gguf")
    truncated.write_bytes((tmp_path / "whole.gguf").read_bytes()[:100])
    with pytest.raises(VectorFileError):
        import_gguf(truncated)
    vector.save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError):
        import_gguf(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="no such file"):
        import_gguf(tmp_path / "absent.gguf")
    with pytest.raises(VectorFileError, match="directory"):
        import_gguf(tmp_path)
    assert not is_gguf_file(text) and not is_gguf_file(tmp_path / "absent.gguf")


def test_general_architecture_is_required(tmp_path):
    # A GGUF with no general.architecture key (GGUFWriter always writes one: build by hand).
    import struct

    def string(value):
        return struct.pack("<Q", len(value)) + value.encode()

    kv = string("controlvector.model_hint") + struct.pack("<I", 8) + string("llama")
    header = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1) + kv
    path = tmp_path / "noarch.gguf"
    path.write_bytes(header)
    with pytest.raises(VectorFileError, match="general.architecture"):
        import_gguf(path)
