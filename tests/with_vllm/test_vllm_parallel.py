"""Steering under vLLM's tensor parallelism on this CPU: three ranks, eager and compiled.

The embedded SmolLM2 has 9 attention heads, so 3 ranks (2 are refused); on two cores
they share the cores (``VLLM_CPU_OMP_THREADS_BIND="0|1|0"``) and each reserves a
smaller share of memory.  Each rank hooks its own copy of every layer, whose output
vLLM has already all-reduced, so every rank applies the same steering to the same
full hidden states and the greedy tokens equal ``icv.steer``'s.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from vllm_cases import MAX_MODEL_LEN, fields, spec  # noqa: E402

import icv  # noqa: E402
from icv.serving.vllm.contract import STATUS_METHOD  # noqa: E402

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

RANKS = 3
MAX_TOKENS = 10
PROMPTS = [
    icv.prompts.paraphrase_prompt(s)
    for s in (
        "the waiter ignored us for an hour .",
        "the room smelled and the bed was hard .",
        "the train was late again .",
        "the soup was too salty .",
    )
]
STEERINGS = [
    spec(("positive", 0.08)),
    spec(("positive", 0.06), ("negative", -0.04), positions="generated"),
    spec(("cheerful", None)),
]


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_three_tensor_parallel_ranks_steer_like_icv_steer(vector_folder, real, reference, monkeypatch, eager):
    from vllm import SamplingParams

    from icv.serving.vllm import SteeredLLM

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|0")
    _, tok = real
    llm = SteeredLLM(
        vectors=[vector_folder],
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        enforce_eager=eager,
        tensor_parallel_size=RANKS,
        gpu_memory_utilization=0.15,
        distributed_executor_backend="mp",
    )
    try:
        statuses = llm.llm.collective_rpc(STATUS_METHOD)
        assert len(statuses) == RANKS and all(s["compiled"] is (not eager) for s in statuses)
        batch = [(p, s) for p in PROMPTS for s in STEERINGS]
        params = [
            SamplingParams(max_tokens=MAX_TOKENS, temperature=0, extra_args=fields(s)) for _, s in batch
        ]
        outputs = llm.generate([p for p, _ in batch], params, use_tqdm=False)
    finally:
        llm.llm.llm_engine.engine_core.shutdown()
    got = [list(o.outputs[0].token_ids) for o in outputs]
    expected = [reference(s, tok(p).input_ids, MAX_TOKENS) for p, s in batch]
    assert got == expected
