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

``--full`` runs the Yelp sweep of docs/results.md instead: test rows 0-199, the 8 hand-written
demonstrations of ``benchmarks/quality/yelp.py`` (``HANDWRITTEN``; in the ICL prompt and as the
vector), and the four methods with six strengths each for ``icv`` and ``icl+icv``
(``FULL_STRENGTHS`` / ``FULL_HYBRID_STRENGTHS``: the strengths docs/results.md reports for
SmolLM2, filled up to six); ``--rows``, ``--strengths``, ``--hybrid-strengths`` and
``--max-new-tokens`` still bound it (``--full --rows 4`` checks the whole path on 4 rows).

Runs in .venv-vllm, which has both engines (``make setup-vllm``)::

    .venv-vllm/bin/python benchmarks/sweep_engines.py --rows 40 --out /tmp/sweep.md
    .venv-vllm/bin/python benchmarks/sweep_engines.py --full --max-new-tokens 32 --out /tmp/sweep-full.md
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
# docs/results.md's Yelp sweep on SmolLM2 reports ICV at 0.03/0.04 (calibrated)/0.05/0.07 and
# ICL+ICV at 0.01/0.015 (calibrated)/0.02/0.03; each filled up to six with points of the
# calibration grids and the next step up.
FULL_STRENGTHS = [0.03, 0.04, 0.05, 0.06, 0.07, 0.09]
FULL_HYBRID_STRENGTHS = [0.01, 0.015, 0.02, 0.03, 0.04, 0.05]
FULL_ROWS = 200
FULL_DEMOS = 8


def handwritten_demos(k: int) -> list[tuple[str, str]]:
    """The first ``k`` hand-written pairs of benchmarks/quality/yelp.py (docs/results.md's demos)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality"))
    from yelp import HANDWRITTEN

    return list(HANDWRITTEN[:k])


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
        hybrid_strengths=args.hybrid_strengths,
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
    floats = lambda t: [float(x) for x in t.split(",")]  # noqa: E731
    parser.add_argument("--rows", type=int, help="test rows (default 40; 200 with --full)")
    parser.add_argument("--strengths", type=floats, help="the icv sweep (default 0.04,0.06,0.08)")
    parser.add_argument("--hybrid", action="store_true", help="add the icl+icv arm")
    parser.add_argument("--hybrid-strengths", type=floats, help="the icl+icv sweep (default the icv sweep)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="docs/results.md's Yelp sweep: rows 0-199, its 8 hand-written demos, 4 methods, 6 strengths each",
    )
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation (enforce_eager)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for the transformers engine (default torch's; 1 avoids two threads "
        "waiting on each other on a contended machine)",
    )
    parser.add_argument("--out", help="write the section's markdown here")
    args = parser.parse_args(argv)
    shown = list(argv) if argv is not None else sys.argv[1:]

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.full:
        args.hybrid = True
        args.rows = FULL_ROWS if args.rows is None else args.rows
        args.strengths = args.strengths or FULL_STRENGTHS
        args.hybrid_strengths = args.hybrid_strengths or FULL_HYBRID_STRENGTHS
        demos = handwritten_demos(FULL_DEMOS)
        first = 0
        described = (
            f"test rows 0-{args.rows - 1}, the {FULL_DEMOS} hand-written demos of benchmarks/quality/yelp.py"
        )
    else:
        args.rows = 40 if args.rows is None else args.rows
        args.strengths = args.strengths or [0.04, 0.06, 0.08]
        demos = yelp_pairs(DEMO_ROWS)
        first = DEMO_ROWS.stop
        described = f"rows {first}-{first + args.rows - 1}, demos from rows 0-4"
    hybrid_strengths = args.hybrid_strengths or args.strengths
    inputs = [source for source, _ in yelp_pairs(range(first, first + args.rows))]
    model, tok = embedded_model()
    engines: dict[str, Any] = {
        "transformers": "transformers",
        "vllm": VllmEngine(model_name_of(model), max_model_len=1024, enforce_eager=args.eager),
    }
    results = {}
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, engine in engines.items():
        evaluation, wall = run_engine(model, tok, demos, inputs, args, engine)
        generation = sum(r.seconds for r in evaluation.results)
        results[name] = (evaluation, wall, generation)
        print(f"{name}: wall {wall:.1f} s, generation {generation:.1f} s", flush=True)

    load_end = os.getloadavg()
    import torch

    threads = torch.get_num_threads()
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
            f"`{' '.join(['benchmarks/sweep_engines.py', *shown])}`: {args.rows} Yelp rows ({described}) x "
            f"(zero-shot + icl + icv at {len(args.strengths)} strengths"
            f"{f' + icl+icv at {len(hybrid_strengths)}' if args.hybrid else ''}) = {requests} answers, "
            f"{args.max_new_tokens} new tokens at most, float32, greedy; vLLM {mode}; torch threads {threads}. Started {started}; "
            f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
            f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end.",
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
