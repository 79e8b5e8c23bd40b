"""Detoxification: rewrite rude sentences politely, keeping what they say."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import icv  # noqa: E402
from _common import compare, default_out, extract_and_save, load_demos, parse_args, print_comparison, rewrite_prompts  # noqa: E402

# icv.calibrate (python recipes/calibrate.py detox: 6 held-in rude sentences, strengths 0.03-0.08,
# alt-profanity-check, MiniLM similarity >= 0.6) chose 0.04: offensive 17% (unsteered 67%) at
# similarity 0.62; from 0.05 nothing is offensive but similarity falls to 0.36 (generic text).
STRENGTH = 0.04

RUDE = [
    "You are a complete idiot and your plan is stupid.",
    "This app is useless garbage made by morons.",
    "Stop texting me, you annoying freak.",
    "Shut up and get out of my office.",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "polite"))
    model, tokenizer = icv.load_model()
    polite = extract_and_save(model, tokenizer, load_demos(HERE), name="polite", strength=args.strength, out=args.out)
    print(f"saved {args.out}  ({polite})\n")
    print_comparison(RUDE, compare(model, tokenizer, rewrite_prompts(RUDE), {"polite": (polite, args.strength)}))


if __name__ == "__main__":
    main()
