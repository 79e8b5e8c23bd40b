"""The strongest check of the GGUF export: llama.cpp itself, steered with an exported control vector,
generates the same greedy tokens as the library's additive block-output steering.

Needs ``llama-cpp-python`` (which compiles llama.cpp; not in any extra ``make test`` installs):
skipped when ``llama_cpp`` cannot be imported.  llama.cpp runs the embedded model's Q4_1 weights
with 8-bit quantised activations in its matrix products, the library runs the same weights
dequantised to float32; the logits differ slightly, so only a few greedy tokens are compared, on
a prompt whose unsteered continuation the two already agree on.
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

PROMPT = "The hotel room was"
NEW_TOKENS = 6


def _llama_cpp_greedy(llm, ids: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        token = int(np.argmax(logits))
        out.append(token)
        llm.eval([token])
    return out


def _set_control_vector(llm, path, n_layer: int) -> None:
    """What llama.cpp's ``common_control_vector_load`` builds from the file, handed to the adapter.

    The flat buffer holds ``direction.N`` at offset ``n_embd * (N - 1)`` (block 0 has no slot);
    blocks 1 .. n_layer are enabled, as ``--control-vector`` does.
    """
    rows = import_gguf(path).directions[1:].contiguous().numpy()
    buffer = (ctypes.c_float * rows.size)(*rows.reshape(-1).tolist())
    code = llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, buffer, rows.size, rows.shape[1], 1, n_layer)
    assert code == 0


def _library_greedy(model, ids: list[int], steps: int) -> list[int]:
    inputs = torch.tensor([ids])
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=steps, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.mark.real_model
def test_llama_cpp_steered_by_an_export_matches_additive_block_steering(real, tmp_path):
    model, tokenizer = real
    vector = icv.extract(model, tokenizer, DEMOS, name="warm")
    path = tmp_path / "warm.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # block 0 is dropped: expected
        export_gguf(vector, path, strength=0.05)
    imported = import_gguf(path)

    llm = llama_cpp.Llama(model_path=str(_smollm2_gguf()), n_ctx=64, n_threads=2, verbose=False)
    ids = tokenizer(PROMPT)["input_ids"]
    n_layer = vector.num_layers

    plain_cpp = _llama_cpp_greedy(llm, ids, NEW_TOKENS)
    plain_lib = _library_greedy(model, ids, NEW_TOKENS)
    assert plain_cpp == plain_lib, "unsteered runs already disagree: quantisation, not the export"

    _set_control_vector(llm, path, n_layer)
    steered_cpp = _llama_cpp_greedy(llm, ids, NEW_TOKENS)
    with icv.steer(model, imported):
        steered_lib = _library_greedy(model, ids, NEW_TOKENS)
    with icv.steer(model, vector, 0.05, mode="add", site="block", layers=range(1, n_layer)):
        original_lib = _library_greedy(model, ids, NEW_TOKENS)

    assert steered_lib == original_lib
    assert steered_lib != plain_lib, "the vector is too weak to show anything"
    assert steered_cpp == steered_lib, (
        f"llama.cpp: {tokenizer.decode(steered_cpp)!r} vs icv: {tokenizer.decode(steered_lib)!r}"
    )
