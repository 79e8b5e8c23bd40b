"""7. The vLLM engine: the cost of per-request steering, and vLLM against the transformers engine.

(a) Offline, vLLM's default compilation (torch.compile with inductor) and then eager
(``enforce_eager``): in each, two engines side by side, plain vLLM without the plugin and
``SteeredLLM`` (float32, prefix caching off so that every round pays its prefill),
generate the same batch of requests, greedy, a fixed number of new tokens each
(``ignore_eos``), arms alternating round by round: plain vLLM; the steered engine with
no request steered; every request steered with one vector; every request steered its
own way (as many distinct steerings as requests: strengths, compositions of two
vectors, positions), all ``rotate@mlp`` on all layers.  Speed ratio = the baseline's
time / the arm's time per round (targets: steered compiled / unsteered compiled in one
engine >= 0.97, steered compiled / plain compiled vLLM >= 0.95).
(b) Over HTTP, on loopback, the transformers engine's workload (``serving_load.py``):
16 concurrent clients, each request steered by one of several mixes (vectors,
strengths, positions, an additive vector, a composition), sent to ``icv serve --engine
vllm`` and to ``icv serve`` (transformers) on the same machine, arms alternating round
by round; plus vLLM unsteered on the same requests, and a 200-request mixed load test
of the vLLM server with every answer checked against the same request sent alone.

Runs in .venv-vllm (``make setup-vllm``), which has both engines:

    .venv-vllm/bin/python benchmarks/vllm_speed.py --out /tmp/vllm.md   # the section, in markdown
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from generation_speed import sentences_and_demos
from harness import alternate, embedded_model, markdown_table, median_seconds, speed_ratio
from serving_load import payloads, percentile, run_clients, save_vectors, unsteered

from icv.prompts import paraphrase_prompt

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TARGETS = {"same engine": 0.97, "plain vLLM": 0.95}
MAX_MODEL_LEN = 512
# (vector, strength) terms of the offline arms' steerings
ONE = [("positive", 0.08)]
MIXED = [
    [("positive", 0.04)],
    [("positive", 0.06)],
    [("positive", 0.08)],
    [("negative", 0.05)],
    [("negative", 0.08)],
    [("positive", 0.06), ("negative", -0.03)],
    [("negative", 0.05), ("positive", 0.02)],
    [("positive", 0.1)],
]
OFFLINE_ARMS = ("plain vLLM", "unsteered", "one vector", "own steering each")


def own_steerings(count: int) -> list[dict[str, Any]]:
    """``count`` distinct steerings: a mix and strength of its own per request, positions varied."""
    positions = ("all", "generated", "prompt")
    return [
        {
            "steering": [{"vector": v, "strength": s * (1 + i / count)} for v, s in MIXED[i % len(MIXED)]],
            "steering_positions": positions[i % len(positions)],
        }
        for i in range(count)
    ]


def _params(tokens: int, extra: dict[str, Any] | None) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=0, extra_args=extra
    )


def measure_offline(
    folder: Path, prompts: Sequence[str], tokens: int, rounds: int, eager: bool
) -> dict[str, Any]:
    """Plain vLLM and the steered engine, both compiled (or both eager), arms alternating."""
    from vllm import LLM

    from icv.models import model_source
    from icv.serving.vllm import SteeredLLM

    engine = dict(
        dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0, enable_prefix_caching=False, enforce_eager=eager
    )
    source, name = model_source(None)
    saved = {k: os.environ.pop(k, None) for k in ("ICV_VLLM_VECTORS", "VLLM_PLUGINS")}
    os.environ["VLLM_PLUGINS"] = ""  # the plain engine's processes load no plugin
    plain = LLM(model=source, served_model_name=name, **engine)
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
    steered = SteeredLLM(vectors=[folder], **engine)
    unsteered = [_params(tokens, None)] * len(prompts)
    batches = {
        "unsteered": unsteered,
        "one vector": [_params(tokens, {"steering": [{"vector": v, "strength": s} for v, s in ONE]})]
        * len(prompts),
        "own steering each": [_params(tokens, extra) for extra in own_steerings(len(prompts))],
    }
    arms = {"plain vLLM": lambda: plain.generate(list(prompts), unsteered, use_tqdm=False)}
    arms.update(
        {
            name: (lambda b=b: steered.generate(list(prompts), b, use_tqdm=False))
            for name, b in batches.items()
        }
    )
    try:
        times = alternate(arms, rounds, warmup=1, label=f"vllm offline {'eager' if eager else 'compiled'}")
    finally:
        steered.llm.llm_engine.engine_core.shutdown()
        plain.llm_engine.engine_core.shutdown()
    return {"times": times, "requests": len(prompts), "tokens": tokens}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_http(
    folder: Path,
    prompts: Sequence[str],
    clients: int,
    per_client: int,
    tokens: int,
    rounds: int,
    load_requests: int,
) -> dict[str, Any]:
    from icv.serving import ModelShape, VectorLibrary
    from icv.serving.engine import BatchingPolicy
    from icv.serving.server import BackgroundServer
    from icv.serving.vllm.launch import VllmServer

    model, tokenizer = embedded_model()
    library = VectorLibrary.load([folder], ModelShape.of(model))
    steered = payloads(prompts, clients * per_client, tokens, None)
    plain = unsteered(steered)
    log = folder / "vllm.log"
    with (
        VllmServer([folder], port=free_port(), log=log, vllm_args=f"--max-model-len {MAX_MODEL_LEN}") as vllm,
        BackgroundServer(
            model, tokenizer, library, policy=BatchingPolicy(max_batch=clients), max_tokens=max(tokens, 16)
        ) as transformers,
    ):
        arms = {
            "transformers, steered": lambda: run_clients(transformers.url, steered, clients),
            "vLLM, steered": lambda: run_clients(vllm.url, steered, clients),
            "vLLM, unsteered": lambda: run_clients(vllm.url, plain, clients),
        }
        times = alternate(arms, rounds, warmup=1, label="vllm http")
        mixed = payloads(prompts[:8], load_requests, tokens, 3)
        load = run_clients(vllm.url, mixed, clients)
        distinct = {repr(sorted(b.items())): b for b in mixed}
        alone = {key: run_clients(vllm.url, [b], 1)["texts"][0] for key, b in distinct.items()}
    wrong = sum(text != alone[repr(sorted(b.items()))] for b, text in zip(mixed, load["texts"], strict=True))
    return {
        "times": times,
        "clients": clients,
        "requests": clients * per_client,
        "tokens": tokens,
        "load": {
            "requests": load_requests,
            "answered": len(load["texts"]),
            "wrong": wrong,
            "seconds": load["seconds"],
            "tokens_per_s": load["tokens"] / load["seconds"],
            "p50": percentile(load["latencies"], 0.5),
            "p95": percentile(load["latencies"], 0.95),
        },
    }


def measure(
    requests: int, tokens: int, rounds: int, clients: int, load_requests: int, http: bool = True
) -> dict[str, Any]:
    sentences, demos = sentences_and_demos(max(requests, 2 * clients))
    prompts = [paraphrase_prompt(s) for s in sentences]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, tokenizer = embedded_model()
        save_vectors(model, tokenizer, demos, folder)
        del model
        offline = {
            mode: measure_offline(folder, prompts[:requests], tokens, rounds, eager=mode == "eager")
            for mode in ("compiled", "eager")
        }
        served = measure_http(folder, prompts, clients, 2, tokens, rounds, load_requests) if http else None
    return {"offline": offline, "http": served}


def _ratio_row(times: dict[str, list[float]], arm: str, baseline: str, tokens: int) -> list[str]:
    ratio = speed_ratio(times, arm, baseline)
    return [
        arm,
        f"{tokens / median_seconds(times, arm):.1f}",
        ratio.text(),
        f"{ratio.low:.3f}-{ratio.high:.3f}",
    ]


def offline_table(offline: dict[str, Any]) -> str:
    rows = []
    for mode in ("compiled", "eager"):
        times = offline[mode]["times"]
        total = offline[mode]["requests"] * offline[mode]["tokens"]
        for arm, baseline in [
            ("plain vLLM", None),
            ("unsteered", "plain vLLM"),
            ("one vector", "unsteered"),
            ("own steering each", "unsteered"),
            ("own steering each", "plain vLLM"),
        ]:
            if baseline is None:
                rows.append([f"{mode}: plain vLLM", f"{total / median_seconds(times, arm):.1f}", "", ""])
                continue
            row = _ratio_row(times, arm, baseline, total)
            row[0] = f"{mode}: {arm} / {baseline}"
            rows.append(row)
    compiled, eager = offline["compiled"]["times"], offline["eager"]["times"]
    total = offline["compiled"]["requests"] * offline["compiled"]["tokens"]
    gain = statistics.median(eager["own steering each"]) / statistics.median(compiled["own steering each"])
    rows.append(
        [
            "steered compiled / steered eager (medians)",
            f"{total / median_seconds(compiled, 'own steering each'):.1f}",
            f"{gain:.3f}",
            "",
        ]
    )
    head = ["arm / baseline", "output tokens/s (median)", "speed / baseline (median)", "min-max"]
    return markdown_table(head, rows)


def table(result: dict[str, Any]) -> str:
    offline, http = result["offline"], result["http"]
    offline_part = (
        f"(a) Offline, {offline['compiled']['requests']} requests x {offline['compiled']['tokens']} new tokens "
        f"per arm and round:\n\n{offline_table(offline)}\n\n"
    )
    if http is None:
        return offline_part + "(b) Over HTTP: not run this time (`--no-http`)."
    head = ["arm", "output tokens/s (median)", "speed / baseline (median)", "min-max"]
    total_http = http["requests"] * http["tokens"]
    times = http["times"]
    vs = [
        _ratio_row(times, "vLLM, steered", "vLLM, unsteered", total_http),
        _ratio_row(times, "vLLM, steered", "transformers, steered", total_http),
        [
            "transformers, steered",
            f"{total_http / median_seconds(times, 'transformers, steered'):.1f}",
            "",
            "",
        ],
    ]
    vs[0][0] = "vLLM steered / vLLM unsteered"
    vs[1][0] = "vLLM steered / transformers steered"
    load = http["load"]
    loaded = markdown_table(
        ["requests", "answered", "wrong", "seconds", "tokens/s", "p50 latency (s)", "p95 latency (s)"],
        [
            [
                load["requests"],
                load["answered"],
                load["wrong"],
                f"{load['seconds']:.1f}",
                f"{load['tokens_per_s']:.1f}",
                f"{load['p50']:.2f}",
                f"{load['p95']:.2f}",
            ]
        ],
    )
    return (
        f"{offline_part}(b) Over HTTP, {http['clients']} clients, {http['requests']} requests x {http['tokens']} new tokens "
        f"per arm and round:\n\n{markdown_table(head, vs)}\n\n"
        f"Load test of the vLLM server ({http['clients']} clients, mixed steering, a third unsteered):\n\n{loaded}"
    )


def section(result: dict[str, Any]) -> str:
    doc = (__doc__ or "").split("\n\n")
    return (
        "## 7. The vLLM engine\n\n"
        f"{doc[1]}\n\n"
        "Model: the embedded SmolLM2-135M-Instruct (30 layers, hidden 576), float32; vLLM is vllm-cpu 0.32.0, "
        "which on this 2-core machine binds its worker to one core and keeps the other for its engine loop, "
        "while the transformers engine's torch uses both.\n\n"
        f"{table(result)}\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=32, help="offline batch size")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--load-requests", type=int, default=200)
    parser.add_argument(
        "--out", type=Path, required=True, help="where the markdown section goes (vLLM logs to stdout)"
    )
    parser.add_argument("--no-http", action="store_true", help="only the offline part (a)")
    args = parser.parse_args(argv)
    result = measure(
        args.requests, args.tokens, args.rounds, args.clients, args.load_requests, http=not args.no_http
    )
    args.out.write_text(section(result), encoding="utf-8")


if __name__ == "__main__":
    main()
