"""Models spread over devices (accelerate: CPU and disk offload) and half precision.

Stated tolerances (also in docs/steering.md), against the same model on one device
in float32:

* accelerate offload (device_map with layers on "disk", or ``cpu_offload``): the same
  float32 arithmetic, so vectors are equal to 1e-6 and logits to 1e-5; greedy tokens equal.
* bfloat16 / float16 weights (tiny llama): extracted directions have cosine > 0.999 per
  layer with the float32 ones and layer scales agree within 1 %; the steering effect on
  the logits (steered minus unsteered, at real tokens) differs from float32's by at most
  15 % of its largest value in bfloat16 (measured 7 % rotate, 1 % add) and 3 % in float16
  (measured 0.9 % rotate, 0.1 % add):
  the unsteered half-precision model itself differs from float32 by that order.
* The embedded model in bfloat16: directions cosine > 0.98 per layer (measured 0.992),
  steering effect on the next-token logits within 10 % (measured 2 %), cosine > 0.99.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import cpu_offload
from tiny import DEMOS, ByteTokenizer, tiny_model
from transformers import AutoModelForCausalLM

import icv
from icv.steer import _prepare_rotation, _Variants

PROMPTS = ["the room was", "i think the food", "service"]
RELATIVE_EFFECT_TOLERANCE = {torch.bfloat16: 0.15, torch.float16: 0.03}


@pytest.fixture(scope="module")
def reference():
    """The single-device float32 model and its vector."""
    model = tiny_model("llama")
    return model, icv.extract(model, ByteTokenizer(), DEMOS)


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """The same tiny llama loaded with layers 1 and 2 offloaded to disk by accelerate."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder / "model")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    model = AutoModelForCausalLM.from_pretrained(
        folder / "model", device_map=device_map, offload_folder=folder / "offload", dtype=torch.float32
    ).eval()
    model.config._name_or_path = "tiny-llama"  # the vector files name the model, not the folder
    return model


def logits(model, vec=None, strength=None, **options):
    batch = ByteTokenizer().batch(PROMPTS)
    with torch.no_grad():
        if vec is None:
            return model(**batch).logits.float()
        with icv.steer(model, vec, strength, **options):
            return model(**batch).logits.float()


def generate(model, vec, use_cache=True, **options):
    batch = ByteTokenizer().batch(PROMPTS)
    with icv.steer(model, vec, 0.8, **options):
        return model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=use_cache)


def test_disk_offload_is_really_in_use(offloaded):
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
    assert offloaded.model.layers[1].mlp.down_proj.weight.device.type == "meta"


def test_extraction_on_a_disk_offloaded_model_matches_one_device(offloaded, reference):
    model, vec = reference
    off_vec = icv.extract(offloaded, ByteTokenizer(), DEMOS)
    torch.testing.assert_close(off_vec.directions, vec.directions, atol=1e-6, rtol=0)
    torch.testing.assert_close(off_vec.layer_scales, vec.layer_scales, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode,site", [("rotate", "mlp"), ("add", "block"), ("add", "attn")])
def test_steering_a_disk_offloaded_model_matches_one_device(offloaded, reference, mode, site):
    model, vec = reference
    expected = logits(model, vec, 0.8, mode=mode, site=site)
    torch.testing.assert_close(logits(offloaded, vec, 0.8, mode=mode, site=site), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, logits(model), atol=1e-3)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_generation_on_a_disk_offloaded_model_matches_one_device(offloaded, reference, positions):
    model, vec = reference
    assert torch.equal(
        generate(offloaded, vec, positions=positions), generate(model, vec, positions=positions)
    )


def test_cpu_offload_with_per_row_strengths(reference):
    model, vec = reference
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert offloaded.model.layers[0].mlp.down_proj.weight.device.type == "meta"
    torch.testing.assert_close(
        icv.extract(offloaded, ByteTokenizer(), DEMOS).directions, vec.directions, atol=1e-6, rtol=0
    )
    strengths = [0.0, 0.5, 1.0]
    torch.testing.assert_close(
        logits(offloaded, vec, strengths), logits(model, vec, strengths), atol=1e-5, rtol=0
    )
    assert not icv.is_steered(offloaded)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_extraction_matches_float32(reference, dtype):
    _, vec = reference
    half = tiny_model("llama", dtype=dtype)
    half_vec = icv.extract(half, ByteTokenizer(), DEMOS)
    assert half_vec.directions.dtype == torch.float32  # vectors are stored in float32 whatever the model
    cosine = torch.nn.functional.cosine_similarity(half_vec.directions, vec.directions, dim=-1)
    assert bool((cosine > 0.999).all()), cosine
    torch.testing.assert_close(half_vec.layer_scales, vec.layer_scales, rtol=0.01, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode,site", [("rotate", "mlp"), ("add", "block")])
def test_half_precision_steering_matches_float32(reference, dtype, mode, site):
    model, vec = reference
    half = tiny_model("llama", dtype=dtype)
    real = ByteTokenizer().batch(PROMPTS)["attention_mask"].bool()
    effect = (logits(model, vec, 0.8, mode=mode, site=site) - logits(model))[real]
    steered = logits(half, vec, 0.8, mode=mode, site=site)
    assert bool(torch.isfinite(steered).all())  # float16 once gave NaN at zero (padding) activations
    half_effect = (steered - logits(half))[real]
    error = (half_effect - effect).abs().max() / effect.abs().max()
    assert error < RELATIVE_EFFECT_TOLERANCE[dtype], f"{dtype} {mode}: relative error {error:.3f}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_generation_with_positions_and_cache(dtype, reference):
    _, vec = reference
    half = tiny_model("llama", dtype=dtype)
    cached = generate(half, vec, positions="generated")
    assert torch.equal(cached, generate(half, vec, positions="generated", use_cache=False))


def test_deltas_are_cast_to_each_activations_device_and_dtype():
    delta = torch.randn(2, 8)  # two per-row deltas, float32 on the CPU
    variants = _Variants(delta, _prepare_rotation)
    for device, dtype in [("cpu", torch.bfloat16), ("meta", torch.float16), ("cpu", torch.float32)]:
        x = torch.zeros(4, 3, 8, device=device, dtype=dtype)  # beam search: 2 beams per row
        prepared = [t for t in variants.get(x) if isinstance(t, torch.Tensor)]
        assert all((t.device.type, t.dtype) == (device, dtype) for t in prepared)
        assert prepared[0].shape == (4, 1, 8)  # row i's delta repeated over its beams
    assert variants.get(torch.zeros(4, 3, 8))[0] is variants.get(torch.ones(4, 5, 8))[0]  # cast once


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU: a model split over cuda:0 and the CPU"
)
def test_a_model_split_between_gpu_and_cpu_matches_one_device(reference, tmp_path):
    model, vec = reference
    model.save_pretrained(tmp_path / "model")
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": "cpu",
        "model.layers.2": 0,
        "model.norm": 0,
        "lm_head": 0,
    }
    split = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", device_map=device_map, dtype=torch.float32
    )
    split.config._name_or_path = "tiny-llama"
    split_vec = icv.extract(split, ByteTokenizer(), DEMOS)
    torch.testing.assert_close(split_vec.directions, vec.directions, atol=1e-5, rtol=0)
    for mode in ("rotate", "add"):
        torch.testing.assert_close(
            logits(split, vec, 0.8, mode=mode).cpu(), logits(model, vec, 0.8, mode=mode), atol=1e-4, rtol=0
        )


@pytest.mark.real_model
def test_real_model_in_bfloat16_matches_float32(real):
    model, tok = real
    demos = [
        ("The food was cold.", "The food was hot."),
        ("I hated it.", "I loved it."),
        ("The staff were rude.", "The staff were kind."),
    ]
    vec = icv.extract(model, tok, demos)
    half = copy.deepcopy(model).to(torch.bfloat16)
    half_vec = icv.extract(half, tok, demos)
    cosine = torch.nn.functional.cosine_similarity(half_vec.directions, vec.directions, dim=-1)
    assert bool((cosine > 0.98).all()), cosine  # measured: min 0.992
    ids = tok("The restaurant was", return_tensors="pt")
    with torch.no_grad():
        base, half_base = model(**ids).logits[0, -1], half(**ids).logits[0, -1].float()
        with icv.steer(model, vec, 0.1):
            effect = model(**ids).logits[0, -1] - base
        with icv.steer(half, vec, 0.1):
            half_effect = half(**ids).logits[0, -1].float() - half_base
    # Measured: cosine 0.9999, largest difference 2 % of the largest effect.
    assert torch.nn.functional.cosine_similarity(effect, half_effect, dim=0) > 0.99
    assert (half_effect - effect).abs().max() < 0.1 * effect.abs().max()
    assert not icv.is_steered(half)
