"""Does the sentiment vector cost accuracy elsewhere?  lm-eval's icv_facts_mc, steered and not.

Runs the embedded SmolLM2 through lm-evaluation-harness on icv_facts_mc (40 general-knowledge
questions, 4 choices, beside this file) three times: unsteered (lm-eval's own ``hf`` model),
then steered by recipes/sentiment's vector (the ``icv`` model) at its calibrated strength and at
twice it.  Needs the extra ``in-context-vectors[lm-eval]``.

    python benchmarks/lm-eval/run.py [--strength S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent.parent / "recipes"
sys.path.insert(0, str(RECIPES))

from _common import load_demos  # noqa: E402
from sentiment.run import STRENGTH  # noqa: E402

import icv  # noqa: E402
from icv.harness import ICVLM  # noqa: E402

TASK = "icv_facts_mc"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--strength", type=float, default=STRENGTH, help=f"the calibrated strength (default {STRENGTH})"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = icv.load_model(progress=False)
    vector = icv.extract(model, tokenizer, load_demos(RECIPES / "sentiment"), name="positive", progress=False)
    tasks = TaskManager(include_path=str(HERE), include_defaults=False)  # only this task: faster
    runs = [("unsteered", None), ("positive", args.strength), ("positive", 2 * args.strength)]
    print("| model | strength | acc | acc_norm | seconds |\n|---|---:|---:|---:|---:|")
    for name, strength in runs:
        started = time.perf_counter()
        if strength is None:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
        else:
            lm = ICVLM(
                pretrained=model,
                tokenizer=tokenizer,
                vector=vector,
                strength=strength,
                batch_size=args.batch_size,
            )
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=tasks)["results"][TASK]
        seconds = time.perf_counter() - started
        shown = "" if strength is None else f"{strength:g}"
        acc = f"{results['acc,none']:.3f} ± {results['acc_stderr,none']:.3f}"
        norm = f"{results['acc_norm,none']:.3f} ± {results['acc_norm_stderr,none']:.3f}"
        print(f"| {name} | {shown} | {acc} | {norm} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
