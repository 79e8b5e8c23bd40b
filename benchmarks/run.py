"""Run every speed benchmark and write docs/benchmarks.md (figures and the command that made them).

    python benchmarks/run.py                  # every section, the embedded model (about 25-45 min on 2 busy cores)
    python benchmarks/run.py --only generation icl
    python benchmarks/run.py --quick --out /tmp/bench.md   # tiny models, a smoke run of seconds

Every figure is a ratio of arms measured side by side in this one run (see harness.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import compiled_speed
import extraction_memory
import extraction_speed
import generation_speed
import icv_vs_icl
import load_time
import serving_load
import serving_pause
import serving_safety
import torch
from harness import REPO

SECTIONS = (
    "generation",
    "compiled",
    "extraction",
    "memory",
    "icl",
    "load",
    "serving",
    "vllm",
    "pause",
    "safety",
)


def _generation(quick: bool) -> str:
    model = "tiny" if quick else "embedded"
    embedded = generation_speed.measure(model, [1, 8], 4 if quick else 48, 2 if quick else 5)
    wide = generation_speed.measure(
        "tiny" if quick else "wide", [1, 8], 4 if quick else 16, 2 if quick else 3
    )
    return (
        "## 1. Generation overhead (steered vs unsteered `model.generate`)\n\n"
        "Greedy, fixed number of new tokens, same prompts (Yelp paraphrase prompts, left-padded), "
        "default strength, 2 torch threads, 48 new tokens, 5 rounds. Speed ratio = unsteered time / "
        f"steered time per round (1.0 = free); target >= {generation_speed.TARGET} for the default "
        "`rotate@mlp`.\n\n"
        f"{generation_speed.table(embedded)}\n\n"
        "At a 7B model's layer width (random weights, a few layers, fewer new tokens to keep the "
        "run short; the hook does O(hidden) work against the layer's O(hidden x 11008)):\n\n"
        f"{generation_speed.table(wide)}\n\n"
        "What keeps the rotation cheap (icv/steer.py): at decode time the hook's tensors are "
        "(batch, 1, hidden), so the cost is the number of tensor ops launched, not arithmetic. "
        "The per-layer, per-dtype, per-batch constants are made once (`_Variants`), and the paper's "
        "formula is written as ten ops with no device sync: |x| and x . (-d/|d|) (one norm, "
        "one vecdot and a view), boost * |x| = |x| + max(0, x . (-d/|d|)) (two in-place ops), "
        "y = x + (boost |x|) d (one addcmul), rescale by |x| / |y| (norm, divide, nan_to_num so "
        "a zero activation stays zero, multiply). It replaced a 13-op version (normalise, cosine, "
        "boost, rescale): about 0.6x the hook time in a microbenchmark.\n"
    )


def _compiled(quick: bool) -> str:
    results = compiled_speed.measure(
        "tiny" if quick else "embedded", [1, 8], 4 if quick else 48, 1 if quick else 5
    )
    return (
        "## 1b. Generation under torch.compile (`icv.prepare_for_compile`)\n\n"
        f"{(compiled_speed.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"{compiled_speed.table(results)}\n"
    )


def _extraction(quick: bool) -> str:
    result = extraction_speed.measure(
        "tiny" if quick else "embedded", 4 if quick else 16, 16, 2 if quick else 3
    )
    return (
        "## 2. Extraction cost\n\n"
        "`icv.extract` vs a plain batched forward (`model(**batch, use_cache=False)`) over the same 2N "
        "texts in batches of the same size, and vs the paper's way (batch 1, "
        "`output_hidden_states=True`, every hidden state kept, then the same PCA). Speed ratio = "
        "other time / extract time per round; target >= 0.9 against the plain forward.\n\n"
        f"{extraction_speed.table(result)}\n"
    )


def _memory(quick: bool) -> str:
    model = "tiny" if quick else "embedded"
    pairs = extraction_speed.demo_pairs(4 if quick else 16)
    results = extraction_memory.measure(model, pairs, [1, 4], [len(pairs) // 2])
    return (
        "## 3. Extraction memory\n\n"
        f"{(extraction_memory.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"Model: {results[0]['model']}. One batch of all texts, both methods.\n\n"
        f"{extraction_memory.table(results)}\n\n"
        "`kept` is what each method holds once done: the vector (layers x hidden, whatever the "
        "number of tokens) vs every layer's hidden states (layers x texts x padded tokens x hidden). "
        "`peak added` includes the forward pass's own transient activations, which both sides pay.\n"
    )


def _icl(quick: bool) -> str:
    model = "tiny" if quick else "embedded"
    # The tiny model's byte tokenizer makes long prompts: fewer shots keep them in its context.
    ks = (1, 2) if quick else (5, 16)
    result = icv_vs_icl.measure(model, 1 if quick else 3, 4 if quick else 32, 1 if quick else 2, ks)
    return (
        "## 4. ICV vs in-context learning, end to end\n\n"
        f"{(icv_vs_icl.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"Model: {result['model']}; {result['queries']} queries.\n\n"
        f"{icv_vs_icl.table(result)}\n\n"
        f"Ratios are ICL / ICV (higher = ICV faster). Extracting the ICV once took "
        f"{result['extract_seconds']:.2f} s (amortised over every later generation).\n\n"
        f"{_prefill_note(result)}\n"
    )


def _prefill_note(result: dict) -> str:
    """Why the prefill ratio trails the length ratio: a fixed cost per forward, fitted here."""
    tokens = [result["prompt_tokens"][name] for name in result["seconds"]]
    seconds = [result["seconds"][name]["prefill"] for name in result["seconds"]]
    mean_t, mean_s = sum(tokens) / len(tokens), sum(seconds) / len(seconds)
    slope = sum((t - mean_t) * (s - mean_s) for t, s in zip(tokens, seconds, strict=True)) / max(
        sum((t - mean_t) ** 2 for t in tokens), 1e-12
    )
    fixed = mean_s - slope * mean_t
    return (
        f"Prefill time is close to a fixed cost per forward pass plus a cost per token (a line "
        f"through the arms above: {fixed * 1000:.0f} ms + {slope * 1000:.2f} ms per token on this "
        "machine), so a prompt 7 times shorter is not 7 times faster to prefill: the prefill "
        "ratio trails the length ratio by that fixed cost, which ICL and ICV both pay; it grows "
        "towards the length ratio as prompts get longer (k = 16)."
    )


def _load(quick: bool) -> str:
    if quick:
        return "## 5. Load time\n\n(skipped in --quick: it converts the embedded model)\n"
    result = load_time.load_times(None, later=2)
    return (
        "## 5. Load time of the embedded model\n\n"
        f"{(load_time.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"{load_time.table(result)}\n"
    )


def _serving(quick: bool) -> str:
    result = serving_load.measure(
        "tiny" if quick else "embedded",
        clients=4 if quick else 16,
        per_client=2,
        new_tokens=4 if quick else 32,
        rounds=1 if quick else 3,
        load_requests=20 if quick else 200,
    )
    return (
        "## 6. Serving: the transformers engine of `icv serve` under load\n\n"
        f"{(serving_load.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"{serving_load.table(result)}\n\n"
        "Throughput ratio = unsteered time / steered time per round (same requests, same token count). "
        "`wrong` counts load-test answers that differ from the same request sent alone to the same server "
        "(greedy, float32). Latency is per request, from sending it to the last byte of its answer, while "
        "all clients keep the server busy.\n"
    )


def _vllm(quick: bool) -> str:
    """vllm_speed.py, run by .venv-vllm's Python: vLLM lives in its own environment."""
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        return "## 7. The vLLM engine\n\n(skipped: `make setup-vllm` makes the environment it runs in)\n"
    sizes = ["--requests", "4", "--tokens", "4", "--rounds", "1", "--clients", "2", "--load-requests", "4"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "vllm.md"
        subprocess.run(
            [
                str(python),
                str(REPO / "benchmarks" / "vllm_speed.py"),
                "--out",
                str(out),
                *(sizes if quick else []),
            ],
            check=True,
            cwd=REPO,
        )
        return out.read_text(encoding="utf-8")


PAUSE_DEFAULTS = dict(prompt_tokens=4000, pairs=64, chunk=256, rounds=2, stream_tokens=2000)


def _pause(quick: bool) -> str:
    # The tiny model's context is 256 tokens: a 200-token prompt and a short stream fit in it.
    sizes = dict(prompt_tokens=200, pairs=16, chunk=32, rounds=1, stream_tokens=200) if quick else {}
    result = serving_pause.measure("tiny" if quick else "embedded", **{**PAUSE_DEFAULTS, **sizes})
    return (
        "## 8. Serving: a stream's longest pause while a long prompt or an extraction arrives\n\n"
        f"{(serving_pause.__doc__ or '').split(chr(10) + chr(10))[1]}\n\n"
        f"{serving_pause.table(result)}\n"
    )


def _safety(_quick: bool) -> str:
    # Always the tiny model: what is measured is the server's refusal and isolation, not speed.
    return (
        "## 9. Serving: a hostile upload and a broken row\n\n"
        "Hostile GGUF control vectors (about 6 KB, one direction 1,536 values wide at a block index no "
        "model has) uploaded to a running server on a tiny model, the server on a thread of the "
        "measuring process, whose peak memory (`VmHWM`, reset before each upload) is reported; and "
        "one broken row in a batch (`benchmarks/serving_safety.py`).\n\n"
        f"{serving_safety.report()}\n"
    )


RUNNERS: dict[str, Callable[[bool], str]] = {
    "generation": _generation,
    "compiled": _compiled,
    "extraction": _extraction,
    "memory": _memory,
    "icl": _icl,
    "load": _load,
    "serving": _serving,
    "vllm": _vllm,
    "pause": _pause,
    "safety": _safety,
}


def _machine() -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}; "
        f"load average (1/5/15 min) at start: {load}"
    )


def render(command: str, sections: Sequence[str], quick: bool) -> str:
    parts = [
        "# Benchmarks: speed and memory\n",
        "Produced by:\n\n```\n" + command + "\n```\n",
        f"Run {datetime.datetime.now().isoformat(timespec='minutes')} on {_machine()}.\n",
        "All figures are ratios of arms measured side by side in the same run: every round runs "
        "each arm once, in an order that rotates and reverses from round to round, after a warm-up "
        "round that is dropped; a ratio is taken per round and its median is reported with the "
        "interquartile range (IQR) and n. Absolute times drift on this shared machine (other "
        "jobs run beside it), ratios much less; the spread shows how much.\n",
    ]
    for name in sections:
        start = time.perf_counter()
        print(f"benchmarks: {name} ...", file=sys.stderr, flush=True)
        parts.append(RUNNERS[name](quick))
        print(f"benchmarks: {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    parts.append(f"Load average at the end: {load}.\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is steadier on a machine shared with other jobs",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shown = ["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    text = render(" ".join(shown), args.only, args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"benchmarks: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
