"""The transformers engine of `icv serve` under load, over HTTP on loopback.

Concurrent clients (threads, each with its own keep-alive HTTP connection) send
completion requests to a server on 127.0.0.1 and wait for each answer before
sending the next, as chat front-ends do.  Two figures: (1) throughput with every
request steered by one of several different steerings (vectors, strengths,
positions, an additive vector, a composition) against the same requests
unsteered, arms alternating round by round on the same server, target >= 0.90;
(2) a load test: a fixed number of mixed requests (a third unsteered) from the
same clients, every response checked, with throughput and latency percentiles.
Every request asks for a fixed number of tokens (greedy, `ignore_eos`), so both
arms generate exactly the same number of tokens and the time ratio is the
throughput ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from generation_speed import sentences_and_demos
from harness import alternate, describe, embedded_model, markdown_table, speed_ratio

import icv
from icv.prompts import paraphrase_prompt
from icv.serving import ModelShape, VectorLibrary
from icv.serving.engine import BatchingPolicy
from icv.serving.server import BackgroundServer

TARGET = 0.90
# Every steered request gets one of these, in turn: a mix of vectors, strengths and positions.
MIXES: list[dict[str, Any]] = [
    {"steering": [{"vector": "positive", "strength": 0.06}]},
    {"steering": [{"vector": "negative", "strength": 0.05}], "steering_positions": "generated"},
    {"steering": [{"vector": "positive", "strength": 0.04}, {"vector": "negative", "strength": -0.02}]},
    {"steering": [{"vector": "positive_add"}]},
    {"steering": [{"vector": "positive", "strength": 0.08}], "steering_positions": "prompt"},
    {"steering": [{"vector": "negative", "strength": 0.03}]},
]


def tiny_served_model() -> tuple[Any, Any]:
    from tiny import char_tokenizer, tiny_model

    return tiny_model("llama"), char_tokenizer()


MODELS = {"embedded": embedded_model, "tiny": tiny_served_model}


def save_vectors(model: Any, tokenizer: Any, demos: Sequence[tuple[str, str]], folder: Path) -> None:
    positive = icv.extract(model, tokenizer, demos, name="positive", progress=False)
    negative = icv.extract(model, tokenizer, [(t, s) for s, t in demos], name="negative", progress=False)
    positive.save(folder / "positive.safetensors")
    negative.save(folder / "negative.safetensors")
    positive.with_metadata(injection_mode="add", injection_site="block").save(
        folder / "positive_add.safetensors"
    )


def payloads(prompts: Sequence[str], count: int, new_tokens: int, steered_every: int | None) -> list[dict]:
    """``count`` requests over ``prompts``; every ``steered_every``-th left unsteered (None: all steered)."""
    out = []
    for i in range(count):
        body: dict[str, Any] = {
            "prompt": prompts[i % len(prompts)],
            "max_tokens": new_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        if steered_every is None or i % steered_every:
            body.update(MIXES[i % len(MIXES)])
        out.append(body)
    return out


def unsteered(bodies: Sequence[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if not k.startswith("steering")} for b in bodies]


def run_clients(url: str, bodies: Sequence[dict], clients: int) -> dict[str, Any]:
    """Send ``bodies`` from ``clients`` concurrent clients; seconds, tokens and per-request latencies."""
    local = threading.local()

    def send(body: dict) -> tuple[float, int, str]:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=600)
        start = time.perf_counter()
        response = local.http.post("/v1/completions", json=body)
        response.raise_for_status()
        data = response.json()
        return time.perf_counter() - start, data["usage"]["completion_tokens"], data["choices"][0]["text"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(send, bodies))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": sum(r[1] for r in results),
        "latencies": [r[0] for r in results],
        "texts": [r[2] for r in results],
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    model_name: str, clients: int, per_client: int, new_tokens: int, rounds: int, load_requests: int
) -> dict[str, Any]:
    model, tokenizer = MODELS[model_name]()
    sentences, demos = sentences_and_demos(max(clients, 32))
    prompts = [paraphrase_prompt(s) for s in sentences]
    with tempfile.TemporaryDirectory() as folder:
        save_vectors(model, tokenizer, demos, Path(folder))
        library = VectorLibrary.load([folder], ModelShape.of(model))
    steered = payloads(prompts, clients * per_client, new_tokens, None)
    plain = unsteered(steered)
    policy = BatchingPolicy(max_batch=clients)
    with BackgroundServer(model, tokenizer, library, policy=policy, max_tokens=max(new_tokens, 16)) as server:
        arms = {
            "steered": lambda: run_clients(server.url, steered, clients),
            "unsteered": lambda: run_clients(server.url, plain, clients),
        }
        times = alternate(arms, rounds, warmup=1, label="serving")
        before = server.engine.stats.snapshot()
        # 8 prompts x the mixes: few distinct requests, so each can be checked against itself sent alone.
        mixed = payloads(prompts[:8], load_requests, new_tokens, 3)
        load = run_clients(server.url, mixed, clients)
        after = server.engine.stats.snapshot()
        # Every answer checked: the same request sent alone gives the same text.
        distinct = {repr(sorted(b.items())): b for b in mixed}
        alone = {key: run_clients(server.url, [b], 1)["texts"][0] for key, b in distinct.items()}
    wrong = sum(text != alone[repr(sorted(b.items()))] for b, text in zip(mixed, load["texts"], strict=True))
    tokens = clients * per_client * new_tokens
    steps = after["decode_steps"] - before["decode_steps"]
    return {
        "model": describe(model),
        "clients": clients,
        "requests": clients * per_client,
        "new_tokens": new_tokens,
        "ratio": speed_ratio(times, "steered", "unsteered"),
        "tokens_per_s": {arm: tokens / statistics.median(t) for arm, t in times.items()},
        "load": {
            "requests": load_requests,
            "answered": len(load["texts"]),
            "wrong": wrong,
            "seconds": load["seconds"],
            "requests_per_s": load_requests / load["seconds"],
            "tokens_per_s": load["tokens"] / load["seconds"],
            "p50": percentile(load["latencies"], 0.5),
            "p95": percentile(load["latencies"], 0.95),
            "mean_batch": (after["decode_rows"] - before["decode_rows"]) / steps if steps else 0.0,
        },
    }


def table(result: dict[str, Any]) -> str:
    ratio = result["ratio"]
    speed = markdown_table(
        [
            "model",
            "clients",
            "requests per arm",
            "new tokens",
            "steered tok/s",
            "unsteered tok/s",
            "throughput ratio (median)",
            "min-max",
            f">= {TARGET}",
        ],
        [
            [
                result["model"],
                result["clients"],
                result["requests"],
                result["new_tokens"],
                f"{result['tokens_per_s']['steered']:.1f}",
                f"{result['tokens_per_s']['unsteered']:.1f}",
                ratio.text(),
                f"{ratio.low:.3f}-{ratio.high:.3f}",
                "yes" if ratio.median >= TARGET else "no",
            ]
        ],
    )
    load = result["load"]
    loaded = markdown_table(
        [
            "requests",
            "answered",
            "wrong",
            "seconds",
            "requests/s",
            "tokens/s",
            "p50 latency (s)",
            "p95 latency (s)",
            "mean batch",
        ],
        [
            [
                load["requests"],
                load["answered"],
                load["wrong"],
                f"{load['seconds']:.1f}",
                f"{load['requests_per_s']:.2f}",
                f"{load['tokens_per_s']:.1f}",
                f"{load['p50']:.2f}",
                f"{load['p95']:.2f}",
                f"{load['mean_batch']:.1f}",
            ]
        ],
    )
    return f"{speed}\n\nLoad test ({result['clients']} concurrent clients, mixed steering, a third unsteered):\n\n{loaded}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-requests", type=int, default=200)
    args = parser.parse_args(argv)
    result = measure(
        args.model, args.clients, args.per_client, args.new_tokens, args.rounds, args.load_requests
    )
    print(table(result))
    print(f"wrong answers in the load test: {result['load']['wrong']}", file=sys.stderr)


if __name__ == "__main__":
    main()
