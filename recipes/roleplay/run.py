"""Role-play: the chat model answers ordinary questions as a pirate would."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import icv  # noqa: E402
from _common import answer_template, chat_prompts, compare, default_out, extract_and_save, load_demos, one_line, parse_args, print_comparison  # noqa: E402

# icv.calibrate (python recipes/calibrate.py roleplay: 6 held-in questions, 0.03-0.08, a
# pirate-word check on the first line, MiniLM similarity to the question >= 0.35) chose 0.03.
# The persona is weak on this 135M model: at most 1 of 6 first lines had a pirate word at any
# strength; 0.05 shows more of the tone ("ye", "shakin' the sails") with rougher answers.
STRENGTH = 0.03

QUESTIONS = [
    "How do I make a cup of tea?",
    "Why is exercise good for you?",
    "What should I do on a rainy day?",
]


def main() -> None:
    args = parse_args(__doc__, strength=STRENGTH, out=default_out(HERE, "pirate"))
    model, tokenizer = icv.load_model()
    # The pairs are read as chat answers, where the vector will be used.
    pirate = extract_and_save(
        model, tokenizer, load_demos(HERE), name="pirate", strength=args.strength, out=args.out,
        template=answer_template(tokenizer),
    )
    print(f"saved {args.out}  ({pirate})\n")
    columns = compare(
        model, tokenizer, chat_prompts(tokenizer, QUESTIONS), {"pirate": (pirate, args.strength)},
        max_new_tokens=40, cut=one_line,
    )
    print_comparison(QUESTIONS, columns)


if __name__ == "__main__":
    main()
