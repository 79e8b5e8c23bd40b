"""Vector files whose numbers no model's activations carry are refused when read, with the reason.

Each bound of :mod:`icv.magnitudes` is tested on both sides (a file just inside loads, one
just outside is refused), through the readers that use it: ``InContextVector.load``,
``import_gguf`` and a server's upload route.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import icv
from icv.errors import VectorFileError
from icv.gguf import import_gguf
from icv.magnitudes import MAX_ACTIVATION_NORM, MAX_RELATIVE_NORM

gguf = pytest.importorskip("gguf")

LAYERS, HIDDEN = 3, 8
METADATA = {
    "model_type": "llama",
    "model_name": "",
    "method": "pca",
    "extraction_site": "block",
    "injection_mode": "rotate",
    "injection_site": "mlp",
    "num_demos": 1,
    "demos_sha256": "",
    "prompt_template": "",
}
INSIDE, OUTSIDE = 0.999, 1.001


def vector_with(direction_norm=1.0, scale=1.0, shift_norm=None, layer=1, method="pca"):
    """A vector whose ``layer`` has a direction and a scale (and shift) of the given sizes; the others are small."""
    unit = torch.zeros(LAYERS, HIDDEN)
    unit[:, 0] = 1.0
    directions = unit.clone()
    directions[layer] *= direction_norm
    scales = torch.ones(LAYERS)
    scales[layer] = scale
    shifts = None
    if shift_norm is not None:
        shifts = unit.clone()
        shifts[layer] *= shift_norm
    return icv.InContextVector(directions, {**METADATA, "method": method}, scales, shifts)


def round_trip(vector, tmp_path):
    path = tmp_path / "v.safetensors"
    vector.save(path, overwrite=True)
    return icv.InContextVector.load(path)


@pytest.mark.parametrize(
    "inside, outside, message",
    [
        (  # a direction counts in units of its layer's activation norm
            dict(direction_norm=INSIDE * MAX_RELATIVE_NORM),
            dict(direction_norm=OUTSIDE * MAX_RELATIVE_NORM),
            "times the layer's activation norm",
        ),
        (  # a layer scale is an activation norm
            dict(scale=INSIDE * MAX_ACTIVATION_NORM),
            dict(scale=OUTSIDE * MAX_ACTIVATION_NORM),
            "its layer scale",
        ),
        (  # what the additive mode adds at strength 1: |direction| * scale
            dict(direction_norm=9.0, scale=INSIDE * MAX_ACTIVATION_NORM / 9),
            dict(direction_norm=9.0, scale=OUTSIDE * MAX_ACTIVATION_NORM / 9),
            "adds a push of norm",
        ),
        (
            dict(shift_norm=INSIDE * MAX_ACTIVATION_NORM),
            dict(shift_norm=OUTSIDE * MAX_ACTIVATION_NORM),
            "its shift has norm",
        ),
    ],
)
def test_each_bound_on_both_sides(tmp_path, inside, outside, message):
    loaded = round_trip(vector_with(**inside), tmp_path)
    assert torch.equal(loaded.directions, vector_with(**inside).directions)
    with pytest.raises(VectorFileError, match=f"layer 1: .*{message}"):
        round_trip(vector_with(**outside), tmp_path)


def test_the_1e38_vector_is_refused_with_the_reason(tmp_path):
    huge = icv.InContextVector(torch.full((LAYERS, HIDDEN), 1e38), METADATA)
    with pytest.raises(VectorFileError, match=r"layer 0: .* at most 100000 \(no model.s activations"):
        round_trip(huge, tmp_path)


def test_extracted_vectors_are_well_inside(llama, tokenizer, demos, tmp_path):
    vector = icv.extract(llama, tokenizer, demos)
    assert float(vector.layer_scales.max()) < MAX_ACTIVATION_NORM / 100
    assert torch.equal(round_trip(vector * 100, tmp_path).directions, (vector * 100).directions)


def write_gguf(path, norm):
    writer = gguf.GGUFWriter(str(path), "controlvector")
    row = np.zeros(HIDDEN, np.float32)
    row[0] = norm
    writer.add_tensor("direction.1", row)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_direction_is_an_absolute_push(tmp_path):
    # Its scales are 1 by convention, so only the absolute bound applies (no relative one).
    assert float(
        import_gguf(write_gguf(tmp_path / "in.gguf", INSIDE * MAX_ACTIVATION_NORM)).directions.max()
    ) > (MAX_RELATIVE_NORM)
    with pytest.raises(VectorFileError, match="layer 1: at strength 1 it adds a push of norm"):
        import_gguf(write_gguf(tmp_path / "out.gguf", OUTSIDE * MAX_ACTIVATION_NORM))


def test_an_upload_of_an_implausible_vector_is_a_400_naming_the_reason(tmp_path):
    from serving_server import BackgroundServer, httpx
    from tiny import char_tokenizer, tiny_model

    from icv.serving import ModelShape, VectorLibrary
    from icv.storage import to_bytes

    model = tiny_model("llama")
    shape = ModelShape.of(model)
    directions = torch.full((shape.num_layers, shape.hidden_size), 1e38)
    huge = icv.InContextVector(directions, METADATA)
    with BackgroundServer(model, char_tokenizer(), VectorLibrary(shape), max_tokens=8) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = http.post(
                "/v1/vectors/upload",
                params={"name": "huge", "filename": "huge.safetensors"},
                content=to_bytes(huge),
                headers={"content-type": "application/octet-stream"},
            )
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_vector_file"
            assert "a size a model's activations carry" in error["message"]
            assert "huge" not in {v["name"] for v in http.get("/v1/vectors").json()["data"]}
