"""The conditional gate's cost through ``icv serve``'s transformers engine, over HTTP on loopback.

A real server (``BackgroundServer``: uvicorn on 127.0.0.1, the engine ``icv serve`` runs)
serves a vector file and a condition folder (``Condition.save_pretrained``).  The same
bounded batch of requests (``--rows`` prompts, greedy, ``--tokens`` new tokens each with
``ignore_eos``, sent at once by one client per row so that they share the engine's batches)
goes in two arms: steered, and steered with ``steering_when`` naming the condition (the
server reads every prompt once before its first prefill chunk, a partial forward pass as
deep as the condition's layer, and steers the rows it accepts).  The arms alternate round
by round after a dropped warm-up round (benchmarks/harness.py); reported: the median over
rounds of gated time / ungated time, measured in this one run.  Before timing, every gated
answer is checked: a row the condition accepted reads as the steered one, a rejected row
as the same request sent unsteered.  The vector, the condition and the prompts are those
of benchmarks/gate_overhead.py (section 13 of docs/benchmarks.md), which times the same gate
under ``icv.steer(..., when=)`` + ``generate``.

    python benchmarks/serve_gate_overhead.py [--model embedded|tiny] [--rows 8] [--tokens 24] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from gate_overhead import TEXTS, condition_and_vector
from harness import alternate, describe, spread
from serving_load import MODELS, run_clients

from icv.prompts import icl_prompt
from icv.serving import ModelShape, VectorLibrary
from icv.serving.engine import BatchingPolicy
from icv.serving.server import BackgroundServer

STRENGTH = 0.04


def bodies(rows: int, tokens: int, when: str | None) -> list[dict[str, Any]]:
    """``rows`` steered completion requests over the benchmark's texts; gated when ``when`` is a rule."""
    out = []
    for i in range(rows):
        body: dict[str, Any] = {
            "prompt": icl_prompt([], TEXTS[i % len(TEXTS)]),
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "steering": [{"vector": "detox", "strength": STRENGTH}],
        }
        if when is not None:
            body["steering_when"] = when
        out.append(body)
    return out


def decisions(url: str, requests: Sequence[dict[str, Any]]) -> list[bool]:
    """Whether the server steered each gated request (its ``steering_decision``), sent one by one."""
    with httpx.Client(base_url=url, timeout=600) as http:
        answers = [http.post("/v1/completions", json=b).raise_for_status().json() for b in requests]
    return [bool(a["choices"][0]["steering_decision"]["steered"]) for a in answers]


def measure(model_name: str, rows: int, tokens: int, rounds: int) -> dict[str, Any]:
    model, tokenizer = MODELS[model_name]()
    cond, vector = condition_and_vector(model, tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        vector.save(Path(folder) / "detox.safetensors")
        # The condition as a save_pretrained folder: served as "toxic", the folder's name.
        condition_folder = cond.save_pretrained(Path(folder) / "toxic")
        library = VectorLibrary.load(
            [Path(folder) / "detox.safetensors", condition_folder], ModelShape.of(model)
        )
    assert library.condition_names == ["toxic"] and library.names == ["detox"]
    ungated, gated = bodies(rows, tokens, None), bodies(rows, tokens, "toxic")
    plain = [{k: v for k, v in b.items() if k != "steering"} for b in ungated]
    policy = BatchingPolicy(max_batch=rows)
    with BackgroundServer(model, tokenizer, library, policy=policy, max_tokens=max(tokens, 16)) as server:
        # What the gate decided, and that each answer is what the decision means.
        fired = decisions(server.url, gated)
        texts = {
            arm: run_clients(server.url, requests, rows)["texts"]
            for arm, requests in (("gated", gated), ("ungated", ungated), ("plain", plain))
        }
        wrong = sum(
            text != (steered if on else bare)
            for text, steered, bare, on in zip(
                texts["gated"], texts["ungated"], texts["plain"], fired, strict=True
            )
        )
        arms = {
            "ungated": lambda: run_clients(server.url, ungated, rows),
            "gated": lambda: run_clients(server.url, gated, rows),
        }
        times = alternate(arms, rounds, warmup=1, label="serve gate")
    ratios = [g / u for g, u in zip(times["gated"], times["ungated"], strict=True)]
    return {
        "model": describe(model),
        "condition": repr(cond),
        "rows": rows,
        "tokens": tokens,
        "fired": sum(fired),
        "wrong": wrong,
        "times": times,
        "ratios": ratios,
        "ratio": spread(ratios),
    }


def report(result: dict[str, Any]) -> str:
    times = result["times"]
    lines = [
        f"model {result['model']}; {result['rows']} requests x {result['tokens']} new tokens per arm "
        f"and round, {result['ratio'].n} rounds",
        f"condition: {result['condition']}; rows it fired on: {result['fired']}/{result['rows']}; "
        f"answers unlike what the decision means: {result['wrong']}",
    ]
    for arm in ("ungated", "gated"):
        runs = ", ".join(f"{t:.2f}" for t in times[arm])
        lines.append(f"  {arm:8s} median {statistics.median(times[arm]):.3f} s  (rounds: {runs})")
    per_round = ", ".join(f"{r:.3f}" for r in result["ratios"])
    lines.append(f"gated / ungated time per round: {per_round}")
    lines.append(f"median gated / ungated = {result['ratio'].text()}")
    load = os.getloadavg()
    lines.append(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(report(measure(args.model, args.rows, args.tokens, args.rounds)))


if __name__ == "__main__":
    main()
