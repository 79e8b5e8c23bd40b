"""4. ICV vs in-context learning, end to end, on Yelp sentences (negative -> positive).

Arms, per query, batch 1, greedy: the zero-demonstration paraphrase prompt steered
by the ICV of 5 demonstrations (``icv``), and the ICL prompt with k = 5 and k = 16
demonstrations written before the query (unsteered).  Measured for each: prompt
tokens, prefill (one forward over the prompt), time to first token
(``generate(max_new_tokens=1)``) and total time (``generate`` of a fixed number of
new tokens).  All arms and measures alternate within each round; ratios are
ICL time / ICV time per query and round, medians reported.  Demonstrations are
Yelp ``reference.0`` rows 0-15, queries rows 100 on: disjoint.  The one-off cost of
extracting the ICV is reported beside it.

    python benchmarks/icv_vs_icl.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from harness import MODELS, alternate, describe, has_yelp, markdown_table, spread, yelp_pairs

import icv
from icv.demos import Demo
from icv.extract import model_device, pad_token_id
from icv.generation import left_padded
from icv.prompts import icl_prompt, paraphrase_prompt

MEASURES = ("prefill", "ttft", "total")


def data(queries: int) -> tuple[list[tuple[str, str]], list[str]]:
    if has_yelp():
        return yelp_pairs(range(16)), [s for s, _ in yelp_pairs(range(100, 100 + queries))]
    from tiny import DEMOS

    demos = [DEMOS[i % len(DEMOS)] for i in range(16)]
    return demos, [f"query number {i} was bad" for i in range(queries)]


def _arm(
    model: torch.nn.Module,
    inputs: dict,
    measure: str,
    new_tokens: int,
    pad: int,
    vector: icv.InContextVector | None,
) -> Callable[[], None]:
    def run() -> None:
        if measure == "prefill":
            model(**inputs)
        else:
            count = 1 if measure == "ttft" else new_tokens
            model.generate(
                **inputs, max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=pad
            )

    if vector is None:
        return run

    def steered() -> None:
        with icv.steer(model, vector):
            run()

    return steered


@torch.no_grad()
def icv_vs_icl(
    model: torch.nn.Module,
    tokenizer: Any,
    demos: Sequence[tuple[str, str]],
    queries: Sequence[str],
    *,
    ks: Sequence[int] = (5, 16),
    icv_demos: int = 5,
    new_tokens: int = 32,
    rounds: int = 2,
    warmup: int = 1,
) -> dict[str, Any]:
    start = time.perf_counter()
    vector = icv.extract(model, tokenizer, demos[:icv_demos], progress=False)
    extract_seconds = time.perf_counter() - start
    device, pad = model_device(model), pad_token_id(tokenizer)
    shots = [Demo(s, t) for s, t in demos]
    prompt_tokens: dict[str, list[int]] = {}
    ratios: dict[str, dict[str, list[float]]] = {f"icl{k}": {m: [] for m in MEASURES} for k in ks}
    seconds: dict[str, dict[str, list[float]]] = {}
    for number, query in enumerate(queries, start=1):
        prompts = {"icv": paraphrase_prompt(query), **{f"icl{k}": icl_prompt(shots[:k], query) for k in ks}}
        arms = {}
        for name, prompt in prompts.items():
            inputs = left_padded(tokenizer, [prompt], device)
            prompt_tokens.setdefault(name, []).append(int(inputs["input_ids"].shape[1]))
            for measure in MEASURES:
                steering = vector if name == "icv" else None
                arms[(name, measure)] = _arm(model, inputs, measure, new_tokens, pad, steering)
        times = alternate(arms, rounds, warmup, label=f"icl query {number}/{len(queries)}")
        for (name, measure), values in times.items():
            seconds.setdefault(name, {}).setdefault(measure, []).extend(values)
            if name != "icv":
                base = times[("icv", measure)]
                ratios[name][measure].extend(t / b for t, b in zip(values, base, strict=True))
    return {
        "extract_seconds": extract_seconds,
        "icv_demos": icv_demos,
        "new_tokens": new_tokens,
        "queries": len(queries),
        "prompt_tokens": {name: statistics.mean(v) for name, v in prompt_tokens.items()},
        "seconds": {n: {m: statistics.median(v) for m, v in per.items()} for n, per in seconds.items()},
        "ratios": {n: {m: spread(v) for m, v in per.items()} for n, per in ratios.items()},
    }


def measure(
    model_name: str, queries: int, new_tokens: int, rounds: int, ks: Sequence[int] = (5, 16)
) -> dict[str, Any]:
    model, tokenizer = MODELS[model_name]()
    demos, sentences = data(queries)
    result = icv_vs_icl(model, tokenizer, demos, sentences, ks=ks, new_tokens=new_tokens, rounds=rounds)
    return {"model": describe(model), **result}


def table(result: dict[str, Any]) -> str:
    tokens, secs = result["prompt_tokens"], result["seconds"]
    rows = [
        [
            f"zero-shot + ICV ({result['icv_demos']} demos)",
            f"{tokens['icv']:.0f}",
            "1",
            *(f"{secs['icv'][m] * 1000:.0f}" for m in MEASURES),
            "1",
            "1",
            "1",
        ]
    ]
    for name, per in result["ratios"].items():
        length = tokens[name] / tokens["icv"]
        rows.append(
            [
                f"ICL, k = {name[3:]}",
                f"{tokens[name]:.0f}",
                f"{length:.2f}",
                *(f"{secs[name][m] * 1000:.0f}" for m in MEASURES),
                *(per[m].text(2) for m in MEASURES),
            ]
        )
    header = [
        "prompt",
        "prompt tokens (mean)",
        "length ratio",
        "prefill ms",
        "TTFT ms",
        f"total ms ({result['new_tokens']} tokens)",
        "prefill ratio",
        "TTFT ratio",
        "total ratio",
    ]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.model, args.queries, args.new_tokens, args.rounds)
    print(table(result))
    print(f"\nICV extraction (one-off): {result['extract_seconds']:.2f} s")


if __name__ == "__main__":
    main()
