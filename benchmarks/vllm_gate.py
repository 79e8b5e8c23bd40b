"""The vLLM engine's gate: what conditional steering (``steering_when``) costs beside plain steering.

One eager offline engine (``SteeredLLM``, float32, chunked prefill off, as gating needs;
prefix caching off so every round pays its prefill) generates the same batch of
requests, greedy, a fixed number of new tokens each (``ignore_eos``), arms alternating
round by round: every request steered with one vector (ungated), and every request steered
with the same vector under a rule (``steering_when``: one condition, read at its layer),
half of the prompts matching it.  Ratio = the ungated arm's time / the gated arm's, per
round (1.0: the gate costs nothing).  The gated arm's extra work is one reading pass
(the forward up to the condition's layer, eager) in the step that runs the prompts.

    .venv-vllm/bin/python benchmarks/vllm_gate.py --requests 16 --tokens 16 --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from generation_speed import sentences_and_demos
from harness import alternate, embedded_model

import icv
from icv.prompts import paraphrase_prompt

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MAX_MODEL_LEN = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from vllm import SamplingParams

    from icv.serving.vllm import SteeredLLM

    model, tok = embedded_model()
    sentences, demos = sentences_and_demos(args.requests)
    prompts = [paraphrase_prompt(s) for s in sentences[: args.requests]]
    with tempfile.TemporaryDirectory() as folder:
        icv.extract(model, tok, demos, name="positive", progress=False).save(
            Path(folder) / "positive.safetensors"
        )
        half = len(prompts) // 2
        condition = icv.extract_condition(model, tok, prompts[:half], prompts[half:], name="first_half")
        condition.save(Path(folder) / "first_half.safetensors")
        del model
        llm = SteeredLLM(
            vectors=[folder],
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            enable_chunked_prefill=False,
            enable_prefix_caching=False,
            seed=0,
        )
        steering = [{"vector": "positive", "strength": 0.08}]

        def params(when: str | None) -> SamplingParams:
            extra = {"steering": steering, **({"steering_when": when} if when else {})}
            return SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True, extra_args=extra)

        fired: list[bool] = []

        def gated() -> None:
            outputs = llm.generate(prompts, params("first_half"), use_tqdm=False)
            fired[:] = [o.steering_decision["steered"] for o in outputs]

        arms = {
            "ungated": lambda: llm.generate(prompts, params(None), use_tqdm=False),
            "gated": gated,
        }
        times = alternate(arms, args.rounds, warmup=1, label="gate")
        llm.llm.llm_engine.engine_core.shutdown()
    ratios = [u / g for u, g in zip(times["ungated"], times["gated"], strict=True)]
    print(
        f"{args.requests} requests x {args.tokens} tokens, {args.rounds} rounds (eager, float32): "
        f"ungated {statistics.median(times['ungated']):.2f} s, gated {statistics.median(times['gated']):.2f} s "
        f"(median per round); ungated/gated per round {', '.join(f'{r:.3f}' for r in ratios)}, "
        f"median {statistics.median(ratios):.3f}; prompts the rule steered: {sum(fired)} of {len(fired)}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
