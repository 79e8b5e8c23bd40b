"""Where icv's defaults differ from the reference code, and how much each difference moves the vector.

    .venv/bin/python benchmarks/quality/reference_gaps.py                      # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/quality/reference_gaps.py --model gemma3-270m

For the first 8 hand-written demonstrations of the Yelp and ParaDetox benchmarks, the
last-token states are read once (raw text, and cleaned as the reference code cleans
it), then aggregated four ways: icv's default (PCA + mean, sign by the mean), the
``svd_flip`` sign, the mean alone, and ``preset="paper"`` (cleaned text, ``svd_flip``).
Printed per demo set: the mean per-layer cosine between the variants' directions, and
how many of 24 Yelp test prompts (rows 0-23 of reference.0, the paraphrase prompt)
get a different greedy 20-token continuation when steered (rotate@mlp, the given
strength).  Then the two ways to apply two vectors at once: their sum (``steer(a + b)``)
and the reference code's averaged pushes (``steer_averaged``), compared by the size of
their effect on the next-token logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import DATA  # noqa: E402
from paradetox import HANDWRITTEN as RUDE  # noqa: E402
from yelp import HANDWRITTEN as NEGATIVE, read_reference  # noqa: E402

import icv  # noqa: E402
from icv.aggregate import aggregator, unit_rows  # noqa: E402
from icv.demos import strip_special_characters  # noqa: E402
from icv.extract import model_device, read_last_token_states  # noqa: E402
from icv.generation import complete, left_padded  # noqa: E402
from icv.prompts import paraphrase_prompt  # noqa: E402

# (label, cleaned text?, aggregation method, PCA sign rule)
VARIANTS = [
    ("default", False, "pca", "mean"),
    ("svd_flip sign", False, "pca", "svd_flip"),
    ("mean only", False, "mean", "mean"),
    ('preset="paper"', True, "pca", "svd_flip"),
]


def directions(model, tokenizer, demos, cleaned: bool, method: str, sign: str) -> torch.Tensor:
    clean = strip_special_characters if cleaned else (lambda text: text)
    texts = [clean(s) for s, _ in demos] + [clean(t) for _, t in demos]
    states = read_last_token_states(model, tokenizer, texts, embedding_row="embedding_output", progress=False)
    shifts = (states[len(demos) :] - states[: len(demos)]).flatten(start_dim=1)
    combined = aggregator(method, pca_sign=sign)(shifts).view(states.shape[1], states.shape[2])
    return unit_rows(combined[1:])


def as_vector(rows: torch.Tensor, template: icv.InContextVector, name: str) -> icv.InContextVector:
    return icv.InContextVector(rows, {**template.metadata, "name": name}, template.layer_scales)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--strength", type=float, default=None, help="rotation strength (default: 0.04 SmolLM2, 0.095 Gemma)"
    )
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = icv.load_model(args.model)
    strength = args.strength or (0.095 if args.model and "gemma" in args.model else 0.04)
    sources = [s for s, _ in read_reference(DATA / "yelp" / "reference.0")[: args.prompts]]
    prompts = [paraphrase_prompt(s) for s in sources]
    plain = complete(model, tokenizer, prompts, max_new_tokens=20, progress=False)
    print(f"model {icv.models.model_name_of(model)}, strength {strength}, {len(prompts)} prompts\n")
    print(
        "| demos | variant | mean cosine to default (min layer) | continuations that differ from default's | differ from unsteered |"
    )
    print("|---|---|---:|---:|---:|")
    kept = {}
    for label, demos in (("Yelp 8", NEGATIVE[:8]), ("ParaDetox 8", RUDE[:8])):
        template = icv.extract(model, tokenizer, demos, progress=False)
        rows = {
            name: directions(model, tokenizer, demos, cleaned, method, sign)
            for name, cleaned, method, sign in VARIANTS
        }
        outputs = {}
        for name, _, _, _ in VARIANTS:
            vector = as_vector(rows[name], template, name)
            outputs[name] = complete(
                model, tokenizer, prompts, vector=vector, strength=strength, max_new_tokens=20, progress=False
            )
        kept[label] = as_vector(rows["default"], template, label)
        for name, _, _, _ in VARIANTS:
            if name == "default":
                moved = sum(a != b for a, b in zip(outputs[name], plain, strict=True))
                print(f"| {label} | default (icv.extract) | 1 | - | {moved}/{len(prompts)} |")
                continue
            cos = torch.nn.functional.cosine_similarity(rows[name], rows["default"], dim=-1)
            differ = sum(a != b for a, b in zip(outputs[name], outputs["default"], strict=True))
            moved = sum(a != b for a, b in zip(outputs[name], plain, strict=True))
            print(
                f"| {label} | {name} | {cos.mean():.4f} ({cos.min():.4f}) | {differ}/{len(prompts)} | {moved}/{len(prompts)} |"
            )
    a, b = kept["Yelp 8"], kept["ParaDetox 8"]
    batch = left_padded(tokenizer, prompts, model_device(model))
    with torch.no_grad():
        base = model(**batch).logits[:, -1]
        with icv.steer(model, a + b, strength):
            summed = model(**batch).logits[:, -1]
        with icv.steer_averaged(model, [a, b], strength):
            averaged = model(**batch).logits[:, -1]
        with icv.steer(model, a, strength / 2), icv.steer(model, b, strength / 2):
            halves = model(**batch).logits[:, -1]
    size = lambda logits: float((logits - base).abs().mean())  # noqa: E731
    print(
        f"\nTwo vectors (Yelp 8 + ParaDetox 8) at strength {strength}: mean absolute change of the next-token logits"
    )
    print(
        f"- steer(a + b): {size(summed):.3f}; steer_averaged([a, b]): {size(averaged):.3f} "
        f"(ratio {size(averaged) / size(summed):.2f}); a and b nested at half strength each: {size(halves):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
