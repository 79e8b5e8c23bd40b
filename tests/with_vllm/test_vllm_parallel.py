"""Steering under vLLM's parallel layouts on two CPU cores gives icv.steer's tokens.

Tensor parallelism: each rank hooks its own copy of every layer, after vLLM's all-reduce,
and fills its own buffers from the same scheduler output; a rank that steered another
token, another slot or a partial hidden state would change the tokens.  SmolLM2 has 9
heads, so three ranks (two are refused).  Pipeline parallelism: each stage hooks only its
own layers, under their global numbers.  ``VLLM_CPU_OMP_THREADS_BIND`` puts the ranks on
the two cores; ``gpu_memory_utilization=0.15`` is the host memory each rank reserves.

``make test-vllm`` runs the eager tensor-parallel engine (about 2 minutes on two quiet
cores); the compiled layouts compile once per rank (9 minutes for two stages on this
loaded machine) and run with ``ICV_VLLM_PARALLEL=all``.  vllm-cpu 0.32 runs pipeline
parallelism only compiled: eager, its CPU runner skips the warm-up that makes the second
stage's buffer for the first stage's output (an ``AssertionError``, docs/vllm.md).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from vllm_cases import GATED_SENTENCES, MAX_MODEL_LEN, fields, spec  # noqa: E402

import icv  # noqa: E402
from icv.serving import SteeringSpec  # noqa: E402
from icv.serving.vllm.contract import DECISIONS_METHOD, GATE_ARG, STATUS_METHOD  # noqa: E402

pytestmark = pytest.mark.real_model

SENTENCES = [
    "the waiter ignored us for an hour .",
    "the room smelled and the bed was hard .",
    "the film was long and dull .",
    "my order arrived late and cold .",
]
STEERINGS = [
    spec(("positive", 0.08)),
    spec(("negative", 0.08), positions="generated"),
    spec(("cheerful", None)),  # a GGUF control vector: addition at the block
]
MAX_TOKENS = 8
LAYOUTS = {  # name: (ranks, vLLM's arguments)
    "tensor, eager": (3, dict(tensor_parallel_size=3, enforce_eager=True)),
    "tensor, compiled": (3, dict(tensor_parallel_size=3)),
    "pipeline, compiled": (2, dict(pipeline_parallel_size=2)),
}
RUN = list(LAYOUTS) if os.environ.get("ICV_VLLM_PARALLEL") == "all" else ["tensor, eager"]


@pytest.fixture(scope="module", params=RUN)
def parallel_llm(request, vector_folder):
    from icv.serving.vllm import SteeredLLM

    ranks, layout = LAYOUTS[request.param]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(["0", "1", "0"][:ranks]))
        engine = SteeredLLM(
            vectors=[vector_folder],
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            seed=0,
            gpu_memory_utilization=0.15,
            distributed_executor_backend="mp",
            enable_chunked_prefill=False,  # what conditional steering needs
            **layout,
        )
        try:
            yield request.param, ranks, engine
        finally:
            engine.llm.llm_engine.engine_core.shutdown()


def test_every_rank_steers_and_the_tokens_equal_icv_steer(parallel_llm, real, reference):
    from vllm import SamplingParams

    kind, ranks, llm = parallel_llm
    _, tok = real
    statuses = llm.llm.collective_rpc(STATUS_METHOD)
    assert len(statuses) == ranks and all(statuses), statuses
    assert all(status["compiled"] == kind.endswith("compiled") for status in statuses), statuses
    batch = [(icv.prompts.paraphrase_prompt(s), case) for s in SENTENCES for case in STEERINGS]
    outputs = llm.generate(
        [p for p, _ in batch],
        [SamplingParams(max_tokens=MAX_TOKENS, temperature=0, extra_args=fields(c)) for _, c in batch],
        use_tqdm=False,
    )
    got = [list(o.outputs[0].token_ids) for o in outputs]
    expected = [reference(case, tok(p).input_ids, MAX_TOKENS) for p, case in batch]
    wrong = [
        (case, tok.decode(g), tok.decode(e))
        for (_, case), g, e in zip(batch, got, expected, strict=True)
        if g != e
    ]
    assert not wrong, f"{kind}: {len(wrong)} of {len(batch)} differ from icv.steer, e.g. {wrong[0]}"


def test_every_rank_decides_a_rule_alike_and_the_tokens_equal_icv_steer(parallel_llm, real, reference):
    """Conditional steering: each rank reads and decides; all must agree, and pass icv.steer's tokens."""
    from vllm import SamplingParams

    kind, ranks, llm = parallel_llm
    _, tok = real
    statuses = llm.llm.collective_rpc(STATUS_METHOD)
    if kind.startswith("pipeline"):
        assert all("pipeline" in status["gating"] for status in statuses), statuses
        return
    gated = SteeringSpec(spec(("positive", 0.08)).terms, "all", "rude")
    prompts = [icv.prompts.paraphrase_prompt(s) for s in GATED_SENTENCES]  # [0] matches, [1] not
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, extra_args=fields(gated))
    outputs = llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
    assert [o.steering_decision["steered"] for o in outputs] == [True, False]
    expected = [
        reference(spec(("positive", 0.08)), tok(prompts[0]).input_ids, MAX_TOKENS),
        reference(None, tok(prompts[1]).input_ids, MAX_TOKENS),
    ]
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    # every rank's own record of the decisions: the same on all (prepared by hand for the ids)
    prepared = [llm.prepare(p, params) for p in prompts]
    llm.llm.generate([p for p, _ in prepared], [q for _, q in prepared], use_tqdm=False)
    ids = [q.extra_args[GATE_ARG] for _, q in prepared]
    answers = llm.llm.collective_rpc(DECISIONS_METHOD, args=(ids,))
    assert len(answers) == ranks and all(answer == answers[0] for answer in answers), answers
    steered = [next(iter(answers[0][i].values()))["steered"] for i in ids]
    assert steered == [True, False]
