"""6. The vLLM engine: output tokens/s with steering vs without, on the same requests.

One vLLM engine (``SteeredLLM``, float32, eager, prefix caching off so that every
round pays its prefill) generates the same batch of requests, greedy, a fixed number
of new tokens each (``ignore_eos``), in three arms per round: unsteered; every request
steered with one vector; every request steered with its own mix (eight distinct
steerings in the batch, compositions of two vectors included).  All steering is the
default ``rotate@mlp`` on all layers at every position.  The figure is the median
over rounds of ``unsteered time / steered time`` (1.0 = free; the target is >= 0.90,
EasySteer reports 0.86 for one vector in eager mode).

Runs in .venv-vllm (``make setup-vllm``):

    .venv-vllm/bin/python benchmarks/vllm_speed.py --out /tmp/vllm.md   # the section, in markdown
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import alternate, markdown_table, median_seconds, speed_ratio

import icv
from icv.prompts import paraphrase_prompt

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TARGET = 0.90
MAX_MODEL_LEN = 512
# (vector, strength) terms of the mixed arm's eight steerings
MIXED = [
    [("positive", 0.04)], [("positive", 0.06)], [("positive", 0.08)], [("negative", 0.05)],
    [("negative", 0.08)], [("positive", 0.06), ("negative", -0.03)], [("negative", 0.05), ("positive", 0.02)],
    [("positive", 0.1)],
]


def vector_folder(folder: Path) -> None:
    """positive and negative sentiment vectors of the embedded model (extracted in this process)."""
    from generation_speed import sentences_and_demos

    model, tok = icv.load_model()
    _, demos = sentences_and_demos(1)
    icv.extract(model, tok, demos, name="positive").save(folder / "positive.safetensors")
    icv.extract(model, tok, [(t, s) for s, t in demos], name="negative").save(folder / "negative.safetensors")


def steering(terms: Sequence[tuple[str, float]] | None) -> dict[str, Any] | None:
    if terms is None:
        return None
    return {"steering": [{"vector": v, "strength": s} for v, s in terms]}


def measure(requests: int, tokens: int, rounds: int) -> dict[str, Any]:
    from generation_speed import sentences_and_demos
    from vllm import SamplingParams

    from icv.serving.vllm import SteeredLLM

    sentences, _ = sentences_and_demos(requests)
    prompts = [paraphrase_prompt(s) for s in sentences]
    with tempfile.TemporaryDirectory() as folder:
        vector_folder(Path(folder))
        llm = SteeredLLM(vectors=[folder], dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0,
                         enable_prefix_caching=False)

        def params(terms: Sequence[tuple[str, float]] | None) -> Any:
            return SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=0,
                                  extra_args=steering(terms))

        batches = {
            "unsteered": [params(None)] * requests,
            "one vector": [params(MIXED[2])] * requests,
            "8 mixed steerings": [params(MIXED[i % len(MIXED)]) for i in range(requests)],
        }
        try:
            times = alternate({name: (lambda b=b: llm.generate(prompts, b, use_tqdm=False))
                               for name, b in batches.items()}, rounds, warmup=1, label="vllm")
        finally:
            llm.llm.llm_engine.engine_core.shutdown()
    return {"times": times, "requests": requests, "tokens": tokens}


def table(result: dict[str, Any]) -> str:
    times, total = result["times"], result["requests"] * result["tokens"]
    rows = []
    for arm in times:
        ratio = "1 (baseline)" if arm == "unsteered" else speed_ratio(times, arm, "unsteered").text()
        rows.append([arm, f"{total / median_seconds(times, arm):.1f}", ratio])
    return markdown_table(["arm", "output tokens/s (median)", "speed / unsteered"], rows)


def section(result: dict[str, Any]) -> str:
    doc = (__doc__ or "").split("\n\n")
    return (
        "## 6. The vLLM engine: steered vs unsteered\n\n"
        f"{doc[1]}\n\n"
        f"Model: the embedded SmolLM2-135M-Instruct (30 layers, hidden 576) in vllm-cpu 0.32.0; "
        f"{result['requests']} requests x {result['tokens']} new tokens per arm and round.\n\n"
        f"{table(result)}\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True, help="where the markdown section goes (vLLM logs to stdout)")
    args = parser.parse_args(argv)
    args.out.write_text(section(measure(args.requests, args.tokens, args.rounds)), encoding="utf-8")


if __name__ == "__main__":
    main()
