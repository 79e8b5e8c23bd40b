"""A vector from ``icv.train`` steers the compiled path (``icv.prepare_for_compile``) with icv.steer's tokens.

The trained file is an ordinary vector; these tests hold the claim to the tokens for both
levels and both injection modes, at the strength the file recommends (``icv.steer`` with no
strength).  The serving engines: tests/test_evaluation_engines.py (``icv serve``) and
tests/with_vllm/test_vllm_sweep.py (the vLLM plugin).
"""

from __future__ import annotations

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv

PROMPTS = ["the room was", "i think the food", "service"]


def generate(model):
    batch = ByteTokenizer().batch(PROMPTS, side="left")
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0)
    return out[:, batch["input_ids"].shape[1] :]


@pytest.mark.parametrize(
    "level, mode, site, strength",
    [("coefficients", "rotate", "mlp", 1.0), ("directions", "add", "block", 0.3)],
)
def test_a_trained_vector_steers_the_compiled_path_like_icv_steer(level, mode, site, strength):
    tok = ByteTokenizer()
    bare = tiny_model("llama")
    start = icv.extract(bare, tok, DEMOS, injection_mode=mode, injection_site=site, progress=False)
    # Trained at a strength that moves the tiny model (test_compiled.py's), recommended by the file.
    trained = icv.train(
        bare,
        tok,
        DEMOS * 2,
        init=start,
        level=level,
        strength=strength,
        steps=2,
        held_out=0,  # every step runs: the file differs from its start
        learning_rate=0.05,
        progress=False,
    )
    assert trained.recommended_strength == strength
    assert trained.metadata["training"]["level"] == level
    assert not torch.equal(trained.directions, start.directions)
    with icv.steer(bare, trained):
        want = generate(bare)
    assert not torch.equal(want, generate(bare)), "the trained vector must change the tokens"
    model = tiny_model("llama")
    with icv.prepare_for_compile(model, mode=mode, site=site):
        with icv.steer(model, trained):
            assert torch.equal(generate(model), want)
