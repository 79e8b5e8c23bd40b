"""Vectors loaded by a server: names, fit to the model, composition and cache keys."""

from __future__ import annotations

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.errors import RequestError, VectorFileError
from icv.serving import ModelShape, SteeringSpec, SteeringTerm, VectorLibrary


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("vectors")
    tok = ByteTokenizer()
    icv.extract(model, tok, DEMOS, name="pos").save(folder / "positive.safetensors")
    icv.extract(model, tok, [(t, s) for s, t in DEMOS], name="neg").save(folder / "negative.safetensors")
    icv.extract(tiny_model("qwen2"), tok, DEMOS, name="other").save(folder / "qwen.safetensors")
    (folder / "notes.txt").write_text("not a vector")
    return folder


@pytest.fixture
def library(folder, model):
    """Fresh per test: tests add vectors to it."""
    return VectorLibrary.load([folder], ModelShape.of(model))


def test_names_are_file_stems_and_other_models_are_kept_aside(library):
    assert library.names == ["negative", "positive"]
    assert list(library.unfit) == ["qwen"]
    with pytest.raises(RequestError, match="cannot steer this model") as caught:
        library.get("qwen")
    assert caught.value.code == "vector_mismatch"
    with pytest.raises(
        RequestError, match=r"no vector named 'nope' is loaded \(loaded: negative, positive\)"
    ):
        library.get("nope")


def test_a_missing_path_and_two_files_of_one_name_are_refused(folder, model, tmp_path):
    with pytest.raises(VectorFileError, match="no vector file or folder"):
        VectorLibrary.load([tmp_path / "missing"], ModelShape.of(model))
    with pytest.raises(VectorFileError, match="two vector files are named 'positive'"):
        VectorLibrary.load([folder, folder / "positive.safetensors"], ModelShape.of(model))


def test_gguf_control_vectors_load_too(library, model, tmp_path):
    pytest.importorskip("gguf")
    positive = library.get("positive").vector
    icv.gguf.export_gguf(positive, tmp_path / "exported.gguf", strength=0.5)
    loaded = VectorLibrary.load([tmp_path], ModelShape.of(model))
    assert loaded.names == ["exported"]
    assert loaded.get("exported").vector.metadata["injection_mode"] == "add"


def test_compose_is_the_python_arithmetic(library):
    spec = SteeringSpec((SteeringTerm("positive", 0.06), SteeringTerm("negative", 0.03)))
    composed = library.compose(spec)
    pos, neg = library.get("positive").vector, library.get("negative").vector
    assert torch.equal(composed.directions, (pos * 0.06 + neg * 0.03).directions)
    assert library.compose(spec) is composed  # cached


def test_a_missing_strength_is_the_vectors_default(library):
    from icv.steer import default_strength_for

    positive = library.get("positive").vector.with_metadata(recommended_strength=0.123)
    library.add("tuned", positive)
    resolved = library.resolve(SteeringSpec((SteeringTerm("tuned"), SteeringTerm("negative"))))
    assert [t.strength for t in resolved.terms] == [
        0.123,
        default_strength_for(library.get("negative").vector),
    ]


def test_fingerprint_changes_with_strength_positions_and_vectors(library):
    base = SteeringSpec((SteeringTerm("positive", 0.06),))
    keys = {
        library.fingerprint(None),
        library.fingerprint(base),
        library.fingerprint(SteeringSpec((SteeringTerm("positive", 0.07),))),
        library.fingerprint(SteeringSpec((SteeringTerm("positive", 0.06),), "generated")),
        library.fingerprint(SteeringSpec((SteeringTerm("negative", 0.06),))),
    }
    assert len(keys) == 5
    assert library.fingerprint(base) == library.fingerprint(SteeringSpec((SteeringTerm("positive", 0.06),)))


def test_describe_lists_metadata_and_strengths(library):
    described = {entry["name"]: entry for entry in library.describe()}
    assert set(described) == {"negative", "positive"}
    assert described["positive"]["metadata"]["name"] == "pos"
    assert described["positive"]["recommended_strength"] is None
    assert described["positive"]["default_strength"] > 0
