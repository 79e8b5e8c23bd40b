"""The strongest check of the GGUF export: llama.cpp itself, steered with an exported control vector,
generates the same greedy tokens as the library's additive block-output steering.

Needs ``llama-cpp-python`` (which compiles llama.cpp; not in any extra ``make test`` installs):
skipped when ``llama_cpp`` cannot be imported.  llama.cpp runs the embedded model's Q4_1 weights
with 8-bit quantised activations in its matrix products, the library runs the same weights
dequantised to float32; their logits differ by up to about 1 (of ~20), enough for unsteered greedy
continuations to part after a few tokens on some prompts ("The hotel room was": the fourth
token).  So the test compares six steered greedy tokens on two prompts (measured: identical on
both, including the one whose unsteered continuations part), and the change the vector makes to
the next-token logits, which must agree (cosine > 0.99; measured 0.995 to 0.9998) and agree
better than the same vector applied one block early (measured 0.95 to 0.98), the mistake a
wrong ``direction.N`` mapping would make.
"""

from __future__ import annotations

import ctypes
import warnings

import numpy as np
import pytest
import torch
from tiny import DEMOS

import icv
from icv.gguf import export_gguf, import_gguf
from icv.models import _smollm2_gguf

llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = ("Yesterday we went to", "The hotel room was")
NEW_TOKENS = 6
STRENGTH = 0.05


def _last_logits(llm) -> torch.Tensor:
    return torch.tensor(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())


def _llama_cpp_run(llm, ids: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    """The prompt's next-token logits and ``steps`` greedy tokens."""
    llm.reset()
    llm.eval(ids)
    logits = _last_logits(llm)
    out = []
    for _ in range(steps):
        token = int(torch.argmax(_last_logits(llm)))
        out.append(token)
        llm.eval([token])
    return logits, out


def _library_run(model, ids: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    inputs = torch.tensor([ids])
    with torch.no_grad():
        logits = model(inputs).logits[0, -1]
    if steps == 0:
        return logits, []
    out = model.generate(
        inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=steps, do_sample=False
    )
    return logits, out[0, len(ids) :].tolist()


def _set_control_vector(llm, rows: torch.Tensor | None, n_layer: int) -> None:
    """What llama.cpp's ``common_control_vector_load`` builds from a file, handed to the adapter.

    ``rows`` are ``direction.1 .. direction.(n_layer-1)``, laid out flat from block 1 (block 0
    has no slot); blocks 1 .. n_layer are enabled, as ``--control-vector`` does.  ``None``
    switches the control vector off.
    """
    if rows is None:
        llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, None, 0, llm.n_embd(), 1, n_layer)
        return
    flat = rows.contiguous().reshape(-1).tolist()
    buffer = (ctypes.c_float * len(flat))(*flat)
    assert llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, buffer, len(flat), rows.shape[1], 1, n_layer) == 0


def _one_block_early(vector: icv.InContextVector) -> icv.InContextVector:
    rows = torch.zeros_like(vector.directions)
    rows[:-1] = vector.directions[1:]
    kept = {k: v for k, v in vector.metadata.items() if k not in ("hidden_size", "num_layers")}
    return icv.InContextVector(rows, kept, vector.layer_scales)


@pytest.mark.real_model
def test_llama_cpp_steered_by_an_export_matches_additive_block_steering(real, tmp_path):
    model, tokenizer = real
    vector = icv.extract(model, tokenizer, DEMOS, name="warm")
    path = tmp_path / "warm.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # block 0 is dropped: expected
        export_gguf(vector, path, strength=STRENGTH)
    imported = import_gguf(path)
    n_layer = vector.num_layers
    llm = llama_cpp.Llama(model_path=str(_smollm2_gguf()), n_ctx=64, n_threads=2, verbose=False)

    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        plain_cpp_logits, _ = _llama_cpp_run(llm, ids, 0)
        plain_logits, plain_tokens = _library_run(model, ids, NEW_TOKENS)
        _set_control_vector(llm, imported.directions[1:], n_layer)
        try:
            steered_cpp_logits, steered_cpp = _llama_cpp_run(llm, ids, NEW_TOKENS)
        finally:
            _set_control_vector(llm, None, n_layer)
        with icv.steer(model, imported):
            steered_logits, steered = _library_run(model, ids, NEW_TOKENS)
        with icv.steer(model, vector, STRENGTH, mode="add", site="block", layers=range(1, n_layer)):
            original_logits, original = _library_run(model, ids, NEW_TOKENS)
        with icv.steer(model, _one_block_early(imported)):
            early_logits, _ = _library_run(model, ids, 0)

        assert original == steered and torch.equal(original_logits, steered_logits)
        assert steered != plain_tokens, "the vector is too weak to show anything"
        assert steered_cpp == steered, (
            f"{prompt!r}: llama.cpp {tokenizer.decode(steered_cpp)!r} vs icv {tokenizer.decode(steered)!r}"
        )
        change_cpp = steered_cpp_logits - plain_cpp_logits
        right = torch.cosine_similarity(change_cpp, steered_logits - plain_logits, dim=0)
        early = torch.cosine_similarity(change_cpp, early_logits - plain_logits, dim=0)
        assert right > 0.99 and right > early, (prompt, float(right), float(early))
