"""Shared by the tests that run vLLM (``make test-vllm`` runs them in .venv-vllm).

Vectors are extracted from the embedded model once per session; ``reference`` is what
``icv.steer`` + ``model.generate`` give in float32, the ground truth vLLM must equal.
"""

from __future__ import annotations

import os
import warnings

import pytest
from tiny import DEMOS as TINY_DEMOS, ByteTokenizer, tiny_model
from vllm_cases import DEMOS, GATED_SENTENCES, RUDE_MATCHING, RUDE_OTHER

import icv
from icv.gguf import export_gguf
from icv.serving import ModelShape, SteeringSpec, VectorLibrary

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes far more


@pytest.fixture(scope="session")
def vector_folder(real, tmp_path_factory):
    """positive, negative (rotate@mlp), cheerful (a GGUF control vector: add@block), additive (add@mlp)
    and one of another model; the condition 'rude' (conditional steering)."""
    model, tok = real
    folder = tmp_path_factory.mktemp("served-vectors")
    rude_condition(model, tok).save(folder / "rude.safetensors")
    positive = icv.extract(model, tok, DEMOS, name="positive")
    positive.save(folder / "positive.safetensors")
    icv.extract(model, tok, [(t, s) for s, t in DEMOS], name="negative").save(folder / "negative.safetensors")
    positive.with_metadata(injection_mode="add", injection_site="mlp").save(folder / "additive.safetensors")
    with warnings.catch_warnings():  # block 0 does not fit a GGUF file: said elsewhere
        warnings.simplefilter("ignore")
        export_gguf(positive, folder / "cheerful.gguf", strength=0.04)
    tiny = tiny_model("llama")
    icv.extract(tiny, ByteTokenizer(), TINY_DEMOS, name="tiny").save(folder / "tiny.safetensors")
    icv.extract_condition(  # a condition of another model: kept aside, named in a 400
        tiny, ByteTokenizer(), [s for s, _ in TINY_DEMOS], [t for _, t in TINY_DEMOS], name="tinycond"
    ).save(folder / "tinycond.safetensors")
    return folder


def rude_condition(model, tok) -> icv.Condition:
    """A condition that matches GATED_SENTENCES[0]'s paraphrase prompt and not [1]'s, by a wide margin."""
    from icv.gate import read_prompt_states, scores_of

    prompt = icv.prompts.paraphrase_prompt
    found = icv.extract_condition(
        model, tok, [prompt(s) for s in RUDE_MATCHING], [prompt(s) for s in RUDE_OTHER], name="rude"
    )
    scores = []
    for sentence in GATED_SENTENCES:
        ids = tok(prompt(sentence), return_tensors="pt").input_ids
        states = read_prompt_states(model, ids, None, [(found.positions, found.layer)])
        scores.append(float(scores_of([found], states)[found][0]))
    rude, clean = scores
    assert abs(rude - clean) > 0.02, scores  # a margin far above float32 noise between engines
    return found.with_threshold((rude + clean) / 2, ">" if rude > clean else "<")


@pytest.fixture(scope="session")
def library(real, vector_folder):
    return VectorLibrary.load([vector_folder], ModelShape.of(real[0]))


@pytest.fixture(scope="session")
def reference(real, library):
    """``reference(spec, prompt_ids, max_tokens)``: greedy token ids under icv.steer (None: unsteered)."""
    import torch

    model, _ = real

    def generate(request_spec: SteeringSpec | None, prompt_ids: list[int], max_tokens: int) -> list[int]:
        ids = torch.tensor([prompt_ids])
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
        if request_spec is None:
            out = model.generate(ids, **kwargs)
        else:
            with icv.steer(
                model, library.compose(request_spec), strength=1.0, positions=request_spec.positions
            ):
                out = model.generate(ids, **kwargs)
        return out[0, ids.shape[1] :].tolist()

    return generate
