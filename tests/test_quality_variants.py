"""benchmarks/quality/variants.py: the spread-weighted PCA variant computes what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import variants  # noqa: E402

from icv.extract import read_last_token_states  # noqa: E402


def test_pca_spread_is_the_mean_plus_the_component_scaled_by_the_spread_of_the_projections():
    model, tok = tiny_model("llama"), ByteTokenizer()
    pairs = [(d[0], d[1]) for d in DEMOS]
    states = read_last_token_states(model, tok, [s for s, _ in pairs] + [t for _, t in pairs])
    shifts = (states[len(pairs) :] - states[: len(pairs)]).double()  # (k, 1 + layers, hidden)
    flat = shifts.flatten(start_dim=1)
    mean = flat.mean(dim=0)
    _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
    component = vh[0] if vh[0] @ mean >= 0 else -vh[0]  # the library's sign rule: towards the mean
    layers = shifts.shape[1] - 1
    # The vector keeps the decoder layers (slot 0, the embedding output, is not steered).
    per_layer_mean = mean.view(1 + layers, -1)[1:]
    per_layer_component = component.view(1 + layers, -1)[1:]
    scores = ((shifts[:, 1:] - per_layer_mean) * per_layer_component).flatten(start_dim=1).sum(dim=1)
    assert abs(scores.std() - 1) > 0.5  # far from the unit weight of "PCA + mean": the test tells them apart
    expected = per_layer_mean + scores.std() * per_layer_component

    vector = variants.spread_weighted_pca(model, tok, pairs)

    torch.testing.assert_close(vector.shifts.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vector.directions.norm(dim=-1), torch.ones(layers))
    assert vector.metadata["name"] == "pca-spread"
