"""How long a running stream waits while other work arrives: chunked prefill and extraction in slices.

A streamed completion decodes on a server on 127.0.0.1 (engine `transformers`) and its client
notes when each server-sent event arrives. While it runs, one thing arrives: a 4,000-token prompt
or a 64-pair extraction (`POST /v1/vectors/extract`). The figure is the stream's longest gap
between two events while that work ran (target <= 2 s on 2 cores), with the engine's chunked
prefill and extraction slices bounded by `--prefill-chunk` tokens' cost (chunks narrowing as the
prompt's context grows), against chunks of `--prefill-chunk` tokens whatever their context (the
engine before) and against the bound lifted (the whole prompt in one forward pass, extraction in
`icv.extract`'s batches of 16 texts). Beside the wall-clock pause, the longest chunk and the
longest decode step in CPU time on the engine's thread: the pause on a core of its own, which a
loaded machine's wall clock hides under other processes' time slices. Also what one prefill chunk
and one extraction slice cost (the engine's own counters), and the stream's median gap with
nothing else running (one step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import torch
from extraction_speed import demo_pairs
from harness import describe, embedded_model, markdown_table, round_orders

from icv.serving import ModelShape, VectorLibrary
from icv.serving.batch import DecodeBatch
from icv.serving.engine import BatchingPolicy
from icv.serving.prefill import ChunkedPrefill
from icv.serving.server import BackgroundServer

TARGET_SECONDS = 2.0
UNBOUNDED = 1 << 30  # a chunk larger than any prompt: one forward pass per prefill
TIMEOUT = 3600.0  # seconds: under `nice` on a loaded machine a 4,000-token prompt took over 600
ARMS = ("bounded", "tokens", "unbounded")


def tiny_served_model() -> tuple[Any, Any]:
    from tiny import char_tokenizer, tiny_model

    return tiny_model("llama"), char_tokenizer()


MODELS = {"embedded": embedded_model, "tiny": tiny_served_model}


class Stream:
    """A streamed completion read on a thread; ``arrivals`` are the times its events came."""

    def __init__(self, url: str, max_tokens: int) -> None:
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        body = {"prompt": "The food was", "max_tokens": max_tokens, "temperature": 0, "stream": True}
        self._thread = threading.Thread(target=self._read, args=(url, {**body, "ignore_eos": True}))
        self._thread.start()

    def _read(self, url: str, body: dict[str, Any]) -> None:
        with (
            httpx.Client(base_url=url, timeout=TIMEOUT) as client,
            client.stream("POST", "/v1/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    self.arrivals.append(time.perf_counter())
                if self._stop.is_set():
                    break  # closing the connection cancels the row on the server

    def wait_for(self, count: int, after: float = 0.0, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` events arrived later than ``after``."""
        deadline = time.monotonic() + timeout
        while sum(t > after for t in self.arrivals) < count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the stream ended or stalled before the measurement was done")
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


class CpuClock:
    """The CPU seconds of every prefill chunk and decode step, on the engine's thread.

    A stream's wall-clock pause on a shared machine is mostly other processes' time
    slices (under ``nice`` at load 12, one decode step took 9 s of wall clock against
    0.2 s quiet); what the engine itself costs is the CPU time of the chunk and the
    step between two of the stream's tokens, which is the pause on a core of its own.
    With one torch thread (``--threads 1``) all of it runs on the engine's thread.
    """

    def __init__(self) -> None:
        self.chunks: list[float] = []
        self.steps: list[float] = []
        self._saved = (ChunkedPrefill.advance, DecodeBatch.step)

    def __enter__(self) -> CpuClock:
        advance, step = self._saved

        def timed_advance(group: Any) -> Any:
            began = time.thread_time()
            try:
                return advance(group)
            finally:
                self.chunks.append(time.thread_time() - began)

        def timed_step(batch: Any, tokens: Any) -> Any:
            began = time.thread_time()
            try:
                return step(batch, tokens)
            finally:
                self.steps.append(time.thread_time() - began)

        ChunkedPrefill.advance = timed_advance  # type: ignore[method-assign,assignment]
        DecodeBatch.step = timed_step  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *_exc: object) -> None:
        ChunkedPrefill.advance, DecodeBatch.step = self._saved  # type: ignore[method-assign,assignment]


def longest_gap(arrivals: Sequence[float], start: float, end: float) -> float:
    """The longest time between two events of which the later came after ``start``, the earlier before ``end``."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b > start and a < end]
    return max(gaps)


def one_trial(url: str, work: Callable[[], None], stream_tokens: int) -> dict[str, float]:
    stream = Stream(url, stream_tokens)
    try:
        stream.wait_for(8)
        alone = [b - a for a, b in zip(stream.arrivals[1:], stream.arrivals[2:], strict=False)]
        start = time.perf_counter()
        work()
        end = time.perf_counter()
        stream.wait_for(2, after=end)
    finally:
        stream.stop()
    return {
        "pause": longest_gap(stream.arrivals, start, end),
        "step": statistics.median(alone),
        "work": end - start,
    }


def long_prompt(tokenizer: Any, tokens: int) -> list[int]:
    """A prompt of exactly ``tokens`` token ids (review sentences repeated)."""
    text = " ".join(s for pair in demo_pairs(64) for s in pair)
    ids: list[int] = []
    while len(ids) < tokens:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:tokens]


def measure(
    model_name: str,
    prompt_tokens: int,
    pairs: int,
    chunk: int,
    rounds: int,
    stream_tokens: int,
    arms_run: Sequence[str] = ARMS,
    extraction: bool = True,
) -> dict:
    model, tokenizer = MODELS[model_name]()
    prompt = long_prompt(tokenizer, prompt_tokens)
    demos = [list(p) for p in demo_pairs(pairs)]
    library = VectorLibrary(ModelShape.of(model))
    # bounded: chunks narrowing with the context (the engine now); tokens: chunks of `chunk` tokens
    # whatever their context (the engine before); unbounded: the whole prompt in one pass.
    policies = {
        "bounded": BatchingPolicy(prefill_chunk=chunk, gather_ms=0),
        "tokens": BatchingPolicy(prefill_chunk=chunk, gather_ms=0, chunk_by_attention=False),
        "unbounded": BatchingPolicy(prefill_chunk=UNBOUNDED, gather_ms=0),
    }
    arms = {arm: policies[arm] for arm in arms_run}
    results: dict[str, dict[str, list[float]]] = {}
    costs: dict[str, list[float]] = {"load": []}
    count = iter(range(10**6))
    for order in round_orders(list(arms), rounds):  # the order rotates: load hits each arm alike
        for arm in order:
            costs["load"].append(os.getloadavg()[0])
            with BackgroundServer(
                model, tokenizer, library, policy=arms[arm], max_tokens=stream_tokens
            ) as server:
                stats = server.engine.stats

                def send_prompt(url: str = server.url) -> None:
                    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
                    httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT).raise_for_status()

                def send_pairs(url: str = server.url) -> None:
                    body = {"name": f"v{next(count)}", "pairs": demos}
                    httpx.post(f"{url}/v1/vectors/extract", json=body, timeout=TIMEOUT).raise_for_status()

                before = (stats.prefill_chunks, stats.prefill_seconds)
                with CpuClock() as clock:
                    trials = {"prompt": one_trial(server.url, send_prompt, stream_tokens)}
                # The longest chunk of the long prompt and the longest step while it went in, in CPU time.
                trials["prompt"]["chunk_cpu"] = max(clock.chunks)
                trials["prompt"]["step_cpu"] = max(clock.steps)
                # The long prompt's chunks (less the stream's own prefill: one chunk of 4 tokens).
                chunks = stats.prefill_chunks - before[0] - 1
                costs.setdefault(f"chunk/{arm}", []).append((stats.prefill_seconds - before[1]) / chunks)
                costs.setdefault(f"chunks/{arm}", []).append(chunks)
                costs.setdefault(f"longest/{arm}", []).append(stats.prefill_longest)
                # Extraction slices do not depend on how prompts are chunked.
                if extraction and arm != "tokens":
                    slices_before = (stats.slices, stats.slice_seconds)
                    trials["extraction"] = one_trial(server.url, send_pairs, stream_tokens)
                    slices = stats.slices - slices_before[0]
                    costs.setdefault(f"slice/{arm}", []).append(
                        (stats.slice_seconds - slices_before[1]) / slices
                    )
                    costs.setdefault(f"slices/{arm}", []).append(slices)
            for work, trial in trials.items():
                for key, value in trial.items():
                    results.setdefault(f"{work}/{arm}", {}).setdefault(key, []).append(value)
                print(f"serving_pause: {work}/{arm}: {trial}", file=sys.stderr, flush=True)
    return {
        "model": describe(model),
        "prompt_tokens": prompt_tokens,
        "pairs": pairs,
        "chunk": chunk,
        "rounds": rounds,
        "results": results,
        "costs": costs,
    }


def cpu_bound(trial: dict[str, list[float]]) -> str:
    """The pause on a core of the engine's own: its longest chunk and step in CPU time (max over rounds)."""
    if "chunk_cpu" not in trial:
        return ""
    chunk, step = max(trial["chunk_cpu"]), max(trial["step_cpu"])
    return f"{chunk + step:.2f} ({chunk:.2f} + {step:.2f})"


def table(result: dict) -> str:
    rows = []
    labels = {
        "prompt/bounded": f"a {result['prompt_tokens']}-token prompt, chunks costing {result['chunk']} tokens",
        "prompt/tokens": f"a {result['prompt_tokens']}-token prompt, chunks of {result['chunk']} tokens",
        "prompt/unbounded": f"a {result['prompt_tokens']}-token prompt, one forward pass",
        "extraction/bounded": f"a {result['pairs']}-pair extraction, slices of {result['chunk']} tokens",
        "extraction/unbounded": f"a {result['pairs']}-pair extraction, batches of 16 texts",
    }
    for key, label in labels.items():
        if key not in result["results"]:
            continue  # an arm or the extraction left out of this run
        trial = result["results"][key]
        longest = max(trial["pause"])
        rows.append(
            [
                label,
                f"{longest:.2f}",
                " / ".join(f"{p:.2f}" for p in trial["pause"]),
                f"{statistics.median(trial['step']):.3f}",
                f"{statistics.median(trial['work']):.1f}",
                "yes" if longest <= TARGET_SECONDS else "no",
                cpu_bound(trial),
            ]
        )
    pauses = markdown_table(
        [
            "what arrives while a stream decodes",
            "longest pause (s)",
            "per round",
            "step alone (s, median)",
            "the work took (s, median)",
            f"<= {TARGET_SECONDS:g} s",
            "longest chunk + longest step, CPU (s)",
        ],
        rows,
    )
    costs = result["costs"]

    def median(key: str, digits: int = 2) -> str:
        return f"{statistics.median(costs[key]):.{digits}f}"

    notes = []
    if "chunks/bounded" in costs:
        notes.append(
            f"costing {result['chunk']} tokens each, the prompt took {median('chunks/bounded', 0)} chunks "
            f"narrowing as its context grew, of {median('chunk/bounded')} s on average and "
            f"{median('longest/bounded')} s the longest"
        )
    if "chunks/tokens" in costs:
        notes.append(
            f"of {result['chunk']} tokens each, {median('chunks/tokens', 0)} chunks of {median('chunk/tokens')} s "
            f"on average and {median('longest/tokens')} s the longest (later chunks attend to more of the prompt)"
        )
    if "slices/bounded" in costs:
        notes.append(
            f"one extraction slice took {median('slice/bounded')} s ({median('slices/bounded', 0)} slices)"
        )
    return (
        f"Model: {result['model']}; {result['rounds']} rounds; load average (1 min) "
        f"{min(costs['load']):.1f}-{max(costs['load']):.1f} as the arms began.\n\n{pauses}\n\n"
        f"Prefill chunks and slices (medians over rounds): {'; '.join(notes)}."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream-tokens", type=int, default=2000)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 on a machine shared with other jobs, where spinning "
        "threads of two processes on the same cores slow each other down many times over",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help="which engines to run, of bounded (chunks narrowing with the context), tokens (chunks of "
        "--chunk tokens: the engine before) and unbounded (one forward pass); default: all",
    )
    parser.add_argument("--no-extraction", action="store_true", help="only the long prompt")
    args = parser.parse_args(argv)
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    if not arms or set(arms) - set(ARMS):
        parser.error(f"--arms takes a comma-separated subset of {', '.join(ARMS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure(
        args.model,
        args.prompt_tokens,
        args.pairs,
        args.chunk,
        args.rounds,
        args.stream_tokens,
        arms,
        not args.no_extraction,
    )
    print(table(result))


if __name__ == "__main__":
    sys.exit(main())
