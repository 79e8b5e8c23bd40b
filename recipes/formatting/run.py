"""Formatting: the chat model answers in UPPER CASE."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import icv  # noqa: E402
from _common import answer_template, chat_prompts, compare, default_out, extract_and_save, load_demos, one_line, parse_args, print_comparison  # noqa: E402

# A bullet-list vector (18 prose -> "- item" pairs) was tried first: it only lower-cased the
# answers, so the recipe uses upper case.  icv.calibrate (python recipes/calibrate.py formatting:
# 6 held-in questions, 0.03-0.08, "upper case" = over 70% capital letters in the first line,
# MiniLM similarity to the question >= 0.35) chose 0.03: 2 of 6 answers in capitals at similarity
# 0.39; from 0.04 every answer is in capitals but off topic (similarity 0.1) and repetitive.
STRENGTH = 0.03

QUESTIONS = [
    "How do I make a cup of tea?",
    "Why is exercise good for you?",
    "What should I do on a rainy day?",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "upper_case"))
    model, tokenizer = icv.load_model()
    upper = extract_and_save(
        model, tokenizer, load_demos(HERE), name="upper_case", strength=args.strength, out=args.out,
        template=answer_template(tokenizer),
    )
    print(f"saved {args.out}  ({upper})\n")
    columns = compare(
        model, tokenizer, chat_prompts(tokenizer, QUESTIONS), {"UPPER CASE": (upper, args.strength)},
        max_new_tokens=40, cut=one_line,
    )
    print_comparison(QUESTIONS, columns)


if __name__ == "__main__":
    main()
