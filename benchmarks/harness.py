"""What every speed benchmark shares: side-by-side timing, the models it runs on, the Yelp data.

Absolute times on a shared machine drift with everyone else's load, so every
figure is a RATIO of arms measured side by side in one run: each round runs every
arm once, in an order that rotates and reverses from round to round (load hits
each arm alike), after warm-up rounds that are thrown away.  A ratio is taken per
round and the median over rounds is reported with its spread (quartiles, min, max).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
# The tiny random models and byte tokenizer of the test suite: no downloads needed.
sys.path.insert(0, str(REPO / "tests"))

DATA_ENV = "ICV_DATA_DIR"


# -- timing -----------------------------------------------------------------------------


def round_orders(arms: Sequence[str], rounds: int) -> list[list[str]]:
    """Per round, the arms rotated by the round's index, reversed on odd rounds."""
    orders = []
    for r in range(rounds):
        shift = r % len(arms)
        order = list(arms[shift:]) + list(arms[:shift])
        orders.append(order[::-1] if r % 2 else order)
    return orders


def alternate(
    arms: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, label: str | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each arm, ``rounds`` times each, interleaved; warm-up rounds dropped.

    With ``label``, one progress line per round goes to stderr (long runs stay visible).
    """
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be >= 1 and warmup >= 0")
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r, order in enumerate(round_orders(list(arms), warmup + rounds)):
        for name in order:
            start = time.perf_counter()
            arms[name]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
        if label:
            kind = "warm-up" if r < warmup else "round"
            print(f"  {label}: {kind} {r + 1}/{warmup + rounds} done", file=sys.stderr, flush=True)
    return times


@dataclass(frozen=True)
class Spread:
    """A median with the quartiles and extremes of the values it summarises."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.median)} (IQR {f.format(self.q1)}-{f.format(self.q3)}, n={self.n})"


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no values to summarise")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Spread(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))


def speed_ratio(times: dict[str, list[float]], arm: str, baseline: str) -> Spread:
    """Speed of ``arm`` relative to ``baseline`` (baseline time / arm time), round by round."""
    return spread([b / a for a, b in zip(times[arm], times[baseline], strict=True)])


def median_seconds(times: dict[str, list[float]], arm: str) -> float:
    return statistics.median(times[arm])


# -- models -----------------------------------------------------------------------------


def embedded_model() -> tuple[torch.nn.Module, Any]:
    import icv

    return icv.load_model()


def tiny_llama() -> tuple[torch.nn.Module, Any]:
    from tiny import ByteTokenizer, tiny_model

    return tiny_model("llama"), ByteTokenizer()


def wide_llama(layers: int = 2) -> tuple[torch.nn.Module, Any]:
    """A random Llama whose layers have a 7B model's shape (hidden 4096, MLP 11008, 32 heads)."""
    from tiny import VOCAB, ByteTokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.config._name_or_path = f"random-llama-7b-shape-{layers}-layers"
    return model, ByteTokenizer()


MODELS: dict[str, Callable[[], tuple[torch.nn.Module, Any]]] = {
    "embedded": embedded_model,
    "tiny": tiny_llama,
    "wide": wide_llama,
}


def describe(model: torch.nn.Module) -> str:
    config = model.config
    return (
        f"{config._name_or_path} ({config.model_type}, {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size})"
    )


# -- data -------------------------------------------------------------------------------


def data_dir() -> Path:
    """``$ICV_DATA_DIR``, else the shared data folder beside the repository."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else REPO.parent / "shared" / "data"


def yelp_pairs(rows: range, name: str = "reference.0") -> list[tuple[str, str]]:
    """(sentence, human rewrite of opposite sentiment) pairs, read at run time (never copied)."""
    path = data_dir() / "yelp" / name
    if not path.is_file():
        raise FileNotFoundError(f"no Yelp data at {path}: set {DATA_ENV} to the folder holding yelp/")
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = []
    for index in rows:
        source, target = lines[index].split("\t")[:2]
        pairs.append((source.strip(), target.strip()))
    return pairs


def has_yelp() -> bool:
    return (data_dir() / "yelp" / "reference.0").is_file()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
