"""Yelp extraction variants: what moves the style/content trade-off of an ICV.

    .venv/bin/python benchmarks/quality/variants.py --variant stripped --strengths 0.03,0.04,0.05,0.06

Each run extracts one vector from a variant of the same 8 hand-written demos (or,
for ``unpaired-means``, from unpaired sentences of ``sentiment.dev.*``), steers the
zero-shot paraphrase prompt on Yelp test rows 0-47 over a strength sweep, and
prints positive rate and MiniLM similarity per strength plus the positive rate
interpolated at similarity 0.65 (the issue's content floor), the one number
that ranks variants fairly when their strengths are not comparable.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import DATA, floats, rows  # noqa: E402
from yelp import HANDWRITTEN, read_reference  # noqa: E402

import icv  # noqa: E402
from icv.evaluate import Evaluation, evaluate  # noqa: E402
from icv.prompts import paraphrase_prompt  # noqa: E402
from icv.scorers import SentimentScorer, SimilarityScorer  # noqa: E402

VARIANTS = ("plain", "stripped", "in-prompt", "unpaired-means", "pca-spread")


def strip_punctuation(text: str) -> str:
    """No final punctuation, so the last token is a word (the reference code goes further and
    deletes all punctuation everywhere: ``icv.extract(..., preset="paper")``)."""
    return re.sub(r"[.!?,;]+$", "", text).strip()


def variant_demos(variant: str, k: int, unpaired: int) -> list[tuple[str, str]]:
    pairs = HANDWRITTEN[:k]
    if variant == "stripped":
        return [(strip_punctuation(s), strip_punctuation(t)) for s, t in pairs]
    if variant == "in-prompt":
        # Both texts read inside the prompt the vector will steer, so the shift is measured in context.
        return [(paraphrase_prompt(s) + s, paraphrase_prompt(s) + t) for s, t in pairs]
    if variant == "unpaired-means":
        negative = (DATA / "yelp" / "sentiment.dev.0").read_text(encoding="utf-8").splitlines()[:unpaired]
        positive = (DATA / "yelp" / "sentiment.dev.1").read_text(encoding="utf-8").splitlines()[:unpaired]
        return [(n.strip(), p.strip()) for n, p in zip(negative, positive, strict=False)]
    return list(pairs)


def spread_weighted_pca(model, tokenizer, demos: list[tuple[str, str]]) -> icv.InContextVector:
    """The mean shift plus the principal component scaled by the spread of the demonstrations'
    projections on it (their standard deviation), where "PCA + mean" adds the unit component.

    Built from the library's own vectors: a ``mean`` vector's shifts are the mean shift per layer,
    a ``pca`` vector's are mean + unit component (same demos), and each demonstration alone gives
    its own shift.
    """
    mean = icv.extract(model, tokenizer, demos, method="mean", progress=False)
    pca = icv.extract(model, tokenizer, demos, method="pca", progress=False)
    component = pca.shifts - mean.shifts
    own = torch.stack(
        [icv.extract(model, tokenizer, [pair], method="mean", progress=False).shifts for pair in demos]
    )
    scores = ((own - mean.shifts) * component).flatten(start_dim=1).sum(dim=1)
    combined = mean.shifts + scores.std() * component
    print(
        json.dumps(
            {
                "mean_norm": round(float(mean.shifts.norm()), 2),
                "component_norm": round(float(component.norm()), 4),
                "spread": round(float(scores.std()), 2),
            }
        ),
        file=sys.stderr,
    )
    directions = combined / combined.norm(dim=-1, keepdim=True)
    metadata = dict(mean.metadata, method="pca", name="pca-spread")
    return icv.InContextVector(directions, metadata, layer_scales=mean.layer_scales, shifts=combined)


def style_at_content(evaluation: Evaluation, floor: float = 0.65) -> float | None:
    """Style success linearly interpolated where the ICV sweep crosses ``floor`` similarity."""
    points = sorted(
        ((r.content, r.style_success) for r in evaluation.results if r.method == "icv"), reverse=True
    )
    for (c1, s1), (c2, s2) in itertools.pairwise(points):
        if c1 >= floor >= c2 and c1 > c2:
            return s1 + (s2 - s1) * (c1 - floor) / (c1 - c2)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="plain", choices=VARIANTS)
    parser.add_argument(
        "--model", default=None, help="steered model (default: embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--k", type=int, default=8, help="hand-written demos used")
    parser.add_argument("--unpaired", type=int, default=200, help="sentences per side for unpaired-means")
    parser.add_argument("--test-rows", default="0:48")
    parser.add_argument("--strengths", default=None, help="comma-separated sweep")
    parser.add_argument("--layers", default=None, help="steer only layers start:stop")
    parser.add_argument("--positions", default=None, choices=("all", "prompt", "generated"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = [source for source, _ in read_reference(DATA / "yelp" / "reference.0")]
    inputs = [test[i] for i in rows(args.test_rows)]
    model, tokenizer = icv.load_model(args.model)
    demos = variant_demos(args.variant, args.k, args.unpaired)
    method = "mean" if args.variant == "unpaired-means" else "pca"
    if args.variant == "pca-spread":
        vector = spread_weighted_pca(model, tokenizer, demos)
    else:
        vector = icv.extract(model, tokenizer, demos, method=method, progress=False)
    steer_options = {k: v for k, v in (("positions", args.positions),) if v}
    if args.layers:
        steer_options["layers"] = list(rows(args.layers))
    evaluation = evaluate(
        model,
        tokenizer,
        HANDWRITTEN[: args.k],
        inputs,
        style=SentimentScorer("positive"),
        content=SimilarityScorer(),
        scorers=[],
        vector=vector,
        strengths=floats(args.strengths, (0.03, 0.04, 0.05, 0.06)),
        methods=["icv"],
        batch_size=48,
        progress=False,
        **steer_options,
    )
    at = style_at_content(evaluation)
    print(
        json.dumps(
            {
                "variant": args.variant,
                "model": args.model or "smollm2",
                "layers": args.layers,
                "positions": args.positions,
                "sweep": [
                    [r.strength, round(r.style_success, 3), round(r.content, 3)] for r in evaluation.results
                ],
                "positive_at_similarity_0.65": None if at is None else round(at, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
