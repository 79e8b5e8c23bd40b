"""What the evaluation tests share: demonstrations, inputs, a decoding tokenizer and known scorers."""

from __future__ import annotations

from tiny import ByteTokenizer

from icv.scorers import FunctionScorer

DEMOS = [("bad day", "good day"), ("i hate it", "i love it")]
INPUTS = ["the food was cold", "slow service", "meh"]


class DecodingTokenizer(ByteTokenizer):
    """ByteTokenizer plus the batch_decode generation needs (one letter per token)."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(97 + int(t) % 26) for t in row if int(t) > 2) for row in rows]


def vowels() -> FunctionScorer:
    """A style scorer: a deterministic function of the text, so steering that changes text changes it."""
    return FunctionScorer(
        "vowels", lambda outputs, s, r: [float(sum(c in "aeiou" for c in o) % 2) for o in outputs]
    )


def overlap() -> FunctionScorer:
    """A content scorer: the share of the alphabet an output has in common with its source."""
    return FunctionScorer(
        "overlap",
        lambda outputs, sources, r: [
            len(set(o) & set(s)) / 26 for o, s in zip(outputs, sources, strict=True)
        ],
        needs_sources=True,
    )
