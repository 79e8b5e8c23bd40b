"""Detoxification: rewrite rude sentences politely, keeping what they say."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import icv  # noqa: E402
from _common import compare, default_out, extract_and_save, load_demos, parse_args, print_comparison, rewrite_prompts  # noqa: E402

# Chosen by sweeping 0.05 / 0.08 / 0.11 on held-out sentences: at 0.05 the rewrites are
# polite and keep their topic; from 0.08 they drift into generic "please ensure..." text.
STRENGTH = 0.05

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
