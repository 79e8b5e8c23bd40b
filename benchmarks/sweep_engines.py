"""10. An evaluation sweep on the transformers engine and on vLLM (``icv.evaluate(..., engine=...)``).

The Yelp sweep of docs/results.md, bounded for a shared 2-core machine: ``--rows`` negative
Yelp sentences (``yelp/reference.0``, rows 5 onwards) rewritten towards positive, the
vector extracted from the first 5 rows' pairs (negative -> the human positive rewrite; disjoint
from the test rows, and the ``icl`` prompt's demonstrations), methods ``zero-shot``, ``icl``
and ``icv`` at ``--strengths`` (and ``icl+icv`` with ``--hybrid``), greedy, float32,
``--max-new-tokens`` each, every answer stopped at its closing quote.  The same call runs
on both engines in one process, the transformers engine first: ``transformers`` generates
in batches of ``--batch-size`` rows with one strength per row; ``vllm`` sends every (row,
method, strength) as one request of one batch to vLLM's offline engine with the plugin
(vLLM's default compilation unless ``--eager``).  Reported: each engine's wall time for
the whole call (vLLM's includes starting its engine), the generation time alone (the sum
of the methods' ``seconds``), their ratios, and how many answers are equal.

Runs in .venv-vllm, which has both engines (``make setup-vllm``)::

    .venv-vllm/bin/python benchmarks/sweep_engines.py --rows 40 --out /tmp/sweep.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from harness import embedded_model, markdown_table, yelp_pairs

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

DEMO_ROWS = range(0, 5)


def run_engine(
    model: Any, tok: Any, demos: list, inputs: list[str], args: argparse.Namespace, engine: Any
) -> tuple[Any, float]:
    import icv
    from icv.scorers import RepetitionScorer, SentimentScorer

    started = time.perf_counter()
    vector = icv.extract(model, tok, demos, name="positive", progress=False)
    methods = ["zero-shot", "icl", "icv", *(["icl+icv"] if args.hybrid else [])]
    evaluation = icv.evaluate(
        model,
        tok,
        demos,
        inputs,
        style=SentimentScorer("positive"),
        scorers=[RepetitionScorer(3)],
        vector=vector,
        strengths=args.strengths,
        methods=methods,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=False,
        engine=engine,
    )
    return evaluation, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    from icv.engines import VllmEngine
    from icv.models import model_name_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument(
        "--strengths", type=lambda t: [float(x) for x in t.split(",")], default=[0.04, 0.06, 0.08]
    )
    parser.add_argument("--hybrid", action="store_true", help="add the icl+icv arm at the same strengths")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (enforce_eager)")
    parser.add_argument("--out", help="write the section's markdown here")
    args = parser.parse_args(argv)
    shown = list(argv) if argv is not None else sys.argv[1:]

    demos = yelp_pairs(DEMO_ROWS)
    inputs = [source for source, _ in yelp_pairs(range(DEMO_ROWS.stop, DEMO_ROWS.stop + args.rows))]
    model, tok = embedded_model()
    engines: dict[str, Any] = {
        "transformers": "transformers",
        "vllm": VllmEngine(model_name_of(model), max_model_len=1024, enforce_eager=args.eager),
    }
    results = {}
    for name, engine in engines.items():
        evaluation, wall = run_engine(model, tok, demos, inputs, args, engine)
        generation = sum(r.seconds for r in evaluation.results)
        results[name] = (evaluation, wall, generation)
        print(f"{name}: wall {wall:.1f} s, generation {generation:.1f} s", flush=True)

    base, fast = results["transformers"][0], results["vllm"][0]
    pairs = [
        (a, b)
        for ra, rb in zip(base.results, fast.results, strict=True)
        for a, b in zip(ra.outputs, rb.outputs, strict=True)
    ]
    same = sum(a == b for a, b in pairs)
    requests = len(pairs)
    rows = [[name, f"{wall:.1f}", f"{generation:.1f}"] for name, (_, wall, generation) in results.items()]
    ratio_wall = results["transformers"][1] / results["vllm"][1]
    ratio_generation = results["transformers"][2] / results["vllm"][2]
    by_method = markdown_table(
        ["method", "strength", "style success (transformers)", "style success (vllm)", "equal answers"],
        [
            [
                a.method,
                "" if a.strength is None else f"{a.strength:g}",
                f"{a.style_success:.3f}",
                f"{b.style_success:.3f}",
                f"{sum(x == y for x, y in zip(a.outputs, b.outputs, strict=True))}/{len(a.outputs)}",
            ]
            for a, b in zip(base.results, fast.results, strict=True)
        ],
    )
    mode = "eager (`enforce_eager`)" if args.eager else "vLLM's default compilation"
    section = "\n".join(
        [
            "## 10. An evaluation sweep: the transformers engine and vLLM",
            "",
            f"`{' '.join(['benchmarks/sweep_engines.py', *shown])}`: {args.rows} Yelp rows x "
            f"(zero-shot + icl + icv at {len(args.strengths)} strengths"
            f"{' + icl+icv at the same' if args.hybrid else ''}) = {requests} answers, "
            f"{args.max_new_tokens} new tokens at most, float32, greedy; vLLM {mode}.",
            "",
            markdown_table(["engine", "wall, whole call (s)", "generation (s)"], rows),
            "",
            f"vLLM / transformers speed: **{ratio_generation:.2f}x** on generation, {ratio_wall:.2f}x on the whole "
            f"call (vLLM's includes starting its engine). Equal answers: {same}/{requests}.",
            "",
            by_method,
            "",
        ]
    )
    print(section)
    if args.out:
        with open(args.out, "w") as out:
            out.write(section)


if __name__ == "__main__":
    main()
