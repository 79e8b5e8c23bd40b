"""The evaluation harness: zero-shot vs in-context learning vs in-context vectors.

On the same inputs and the same demonstrations it runs

* ``zero-shot``: the paraphrase prompt alone,
* ``icl``: the demonstrations written into the prompt (the paper's baseline),
* ``icv``: the paraphrase prompt, steered by the vector of those demonstrations,
  at every strength of a sweep (one batched pass, one strength per row),
* ``icl+icv`` (on request): the ICL prompt, steered by the same vector over a sweep
  of its own (the demonstrations both in the prompt and as the vector),
* ``trained`` (on request): the paraphrase prompt, steered by a vector fitted by
  :func:`icv.train` (given, or trained here on the demonstrations) at its recommended
  strength or over a sweep of its own,

scores every answer (style success, content preservation, fluency, and any
scorer the caller adds) and reports per method the scores, the mean prompt
length in tokens and the generation time, as JSON, a markdown table and a plot
of style success against content preservation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from .condition import Rule, as_rule
from .demos import as_demos
from .engines import GenerationEngine, Sweep, engine_for
from .errors import OptionError
from .extract import extract
from .prompts import icl_prompt, paraphrase_prompt
from .scorers import (
    PerplexityScorer,
    RepetitionScorer,
    Scorer,
    SimilarityScorer,
    fluency_model_for,
    score_all,
    success_rate,
)
from .sweep import check_inputs, check_strengths
from .train import train
from .vector import InContextVector

METHODS = ("zero-shot", "icl", "icv", "icl+icv", "trained")
# The hybrid costs ICL's long prompt at every strength of its sweep: asked for, not by default.
DEFAULT_METHODS = ("zero-shot", "icl", "icv")
STEERED = ("icv", "icl+icv")
DEFAULT_STRENGTHS = (0.03, 0.05, 0.07, 0.09)


@dataclass
class MethodResult:
    """One row of the report: a method (at one strength, for the steered ones) and its figures."""

    method: str
    strength: float | None
    style_success: float
    content: float
    scores: dict[str, float]
    prompt_tokens: float
    seconds: float
    empty: float
    outputs: list[str] = field(default_factory=list)
    # With ``when=`` (a steered arm): per input, whether the condition let the steering act.
    fired: list[bool] | None = None

    @property
    def label(self) -> str:
        return self.method if self.strength is None else f"{self.method} @ {self.strength:g}"

    @property
    def steered_rows(self) -> int | None:
        """How many inputs the steering acted on (``None`` without ``when=``, or for an unsteered arm)."""
        return None if self.fired is None else sum(self.fired)


@dataclass
class Evaluation:
    """Every method's result, with the settings that produced them."""

    results: list[MethodResult]
    style: str
    content: str
    settings: dict[str, Any]

    @property
    def style_label(self) -> str:
        """What style success counts: ``positive``, or ``not offensive`` for a lower-is-better scorer."""
        return self.style if self.settings.get("style_higher_is_better", True) else f"not {self.style}"

    def result(self, method: str, strength: float | None = None) -> MethodResult:
        for r in self.results:
            if r.method == method and (strength is None or r.strength == strength):
                return r
        raise OptionError(f"no result for {method!r} at strength {strength!r}")

    def to_dict(self, *, outputs: bool = True) -> dict[str, Any]:
        rows = []
        for r in self.results:
            row = asdict(r)
            if not outputs:
                row.pop("outputs")
            rows.append(row)
        return {"style": self.style, "content": self.content, "settings": self.settings, "results": rows}

    def markdown(self) -> str:
        """The report as a markdown table (the vector's recommended strength, if any, is marked)."""
        names = list(self.results[0].scores) if self.results else []
        # With when=: how many inputs each steered arm's gate let through.
        gated = any(r.fired is not None for r in self.results)
        extra = [n for n in names if n not in (self.style, self.content)]
        header = [
            "method",
            "strength",
            f"style success ({self.style_label})",
            f"content ({self.content})",
            *extra,
            "empty",
            *(["steered rows"] if gated else []),
            "prompt tokens",
            "seconds",
        ]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        recommended = self.settings.get("recommended_strength")
        # A strength is recommended for one prompt form: marked in the arm that uses that form.
        recommended_for = self.settings.get("recommended_for", "icv")
        for r in self.results:
            strength = "" if r.strength is None else f"{r.strength:g}"
            # The vector's own recommendation: calibrated, or set by hand (`icv extract --strength`);
            # the file does not say which, so neither does the table.
            if r.strength is not None and r.strength == recommended and r.method == recommended_for:
                strength += " (recommended)"
            if r.method == "trained" and r.strength == self.settings.get("trained_recommended_strength"):
                strength += " (recommended)"
            cells = [
                _trained_label(self.settings) if r.method == "trained" else r.method,
                strength,
                _fmt(r.style_success),
                _fmt(r.content),
                *(_fmt(r.scores[n]) for n in extra),
                _fmt(r.empty),
                *([_steered(r)] if gated else []),
                f"{r.prompt_tokens:.1f}",
                f"{r.seconds:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str], title: str | None = None) -> Path:
        """Style success against content preservation: each steered sweep as a line, baselines as points."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # A bare Figure with its own Agg canvas: no pyplot, no global backend change.
        figure = Figure(figsize=(6.4, 4.8), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        lines = {
            "icv": ("tab:blue", "ICV (strength sweep)"),
            "icl+icv": ("tab:red", "ICL + ICV (demos in prompt, strength sweep)"),
            "trained": ("tab:purple", "trained vector (icv.train)"),
        }
        for method, (color, label) in lines.items():
            sweep = sorted((r for r in self.results if r.method == method), key=lambda r: r.strength or 0.0)
            if not sweep:
                continue
            axes.plot(
                [r.content for r in sweep], [r.style_success for r in sweep], "o-", color=color, label=label
            )
            for r in sweep:
                axes.annotate(
                    f"{r.strength:g}",
                    (r.content, r.style_success),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        markers = {
            "icl": ("s", "tab:orange", "ICL (demos in prompt)"),
            "zero-shot": ("^", "tab:green", "zero-shot"),
        }
        for method, (marker, color, label) in markers.items():
            for r in self.results:
                if r.method == method:
                    axes.plot([r.content], [r.style_success], marker, color=color, markersize=9, label=label)
        axes.set_xlabel(f"content preservation ({self.content})")
        axes.set_ylabel(f"style success ({self.style_label})")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=8)
        if title:
            axes.set_title(title)
        figure.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
        return target

    def save(
        self, folder: str | os.PathLike[str], stem: str = "eval", title: str | None = None
    ) -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
        paths["json"].write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=_json_safe) + "\n"
        )
        paths["markdown"].write_text(self.markdown() + "\n")
        self.plot(paths["plot"], title=title)
        return paths


def _trained_label(settings: dict[str, Any]) -> str:
    """``trained (coefficients by teacher, 40 steps)``: the arm, with what training did."""
    record = settings.get("training")
    if not isinstance(record, dict):
        return "trained"
    return f"trained ({record.get('level')} by {record.get('objective')}, {record.get('steps')} steps)"


def _steered(result: MethodResult) -> str:
    return "" if result.fired is None else f"{sum(result.fired)}/{len(result.fired)}"


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def _json_safe(value: Any) -> Any:
    return str(value)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    demos: Iterable[object] | None,
    inputs: Sequence[str],
    *,
    style: Scorer,
    content: Scorer | None = None,
    scorers: Sequence[Scorer] | None = None,
    references: Sequence[str] | None = None,
    vector: InContextVector | None = None,
    strengths: Sequence[float] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    hybrid_strengths: Sequence[float] | None = None,
    prompt_demos: int | None = None,
    extract_options: dict[str, Any] | None = None,
    trained: InContextVector | None = None,
    trained_strengths: Sequence[float] | None = None,
    train_options: dict[str, Any] | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    progress: bool | None = None,
    engine: str | GenerationEngine = "transformers",
    url: str | None = None,
    api_key: str | None = None,
    when: Rule | None = None,
    **steer_options: Any,
) -> Evaluation:
    """Compare zero-shot, ICL and ICV (and, asked for, ICL + ICV) on ``inputs`` with the same ``demos``.

    The vector's recommended strength joins the default sweep of the arm whose prompt it
    was calibrated for (``calibrated_with_demos`` in its metadata: ``icl+icv`` when above
    0, else ``icv``) and is marked there in the markdown.

    Args:
        model: the model to evaluate.
        tokenizer: its tokenizer.
        demos: the demonstrations ICL writes into its prompt and ICV is extracted from;
            may be ``None`` when no method needs them (zero-shot, and ICV with ``vector``).
        inputs: the test inputs.
        style: the style scorer (its success rate is the headline figure).
        content: content preservation; default MiniLM similarity to the source.
        scorers: further scorers; default: 3-gram repetition and perplexity under
            Gemma 3 270M.  Give ``[]`` for none.
        references: human rewrites, one per input (BLEU and the like).
        vector: the ICV to steer with; extracted from ``demos`` (with ``extract_options``)
            when not given.
        strengths: the ICV sweep; default 0.03/0.05/0.07/0.09.
        methods: any of ``zero-shot``, ``icl``, ``icv``, ``icl+icv``, ``trained``; default
            the first three (the hybrid pays ICL's prompt at every strength of its sweep;
            ``trained`` needs ``trained`` or a training run on ``demos``).
        hybrid_strengths: the ``icl+icv`` sweep; default the ICV sweep's values.
        prompt_demos: how many of the demonstrations (the first ones) ``icl+icv`` writes
            into its prompt; default all of them, as ``icl`` does.  The vector is the same.
        extract_options: keyword arguments for :func:`icv.extract` when the vector is
            extracted here.
        trained: the ``trained`` arm's vector (a file :func:`icv.train` or ``icv train``
            wrote); ``None`` with ``trained`` in ``methods``: trained here by
            :func:`icv.train` on ``demos``, starting from the ``icv`` arm's vector (``vector``,
            or the one extracted here), so the two arms differ only by the training; with
            neither, from the vector :func:`icv.train` extracts from its training part.
        trained_strengths: the ``trained`` sweep; default the trained vector's recommended
            strength alone (the strength it was trained at).
        train_options: keyword arguments for :func:`icv.train` when the vector is trained
            here (``level``, ``steps``, ``seed``, ...).
        max_new_tokens: tokens generated per output.
        batch_size: prompts per generation batch.
        progress: show progress bars; ``None``: when there are more than 4 batches.
        engine: where the answers are generated (:mod:`icv.engines`): ``"transformers"``
            (``model.generate``), ``"vllm"`` (every row of every method and strength one
            request of one vLLM batch, per-request steering), ``"server"`` (the same
            requests to a running ``icv serve`` at ``url``), or an engine object such as
            ``icv.engines.VllmEngine(model, tensor_parallel_size=2)``.
        url: the server's address, with ``engine="server"``.
        api_key: the server's API key, with ``engine="server"``.
        when: conditional steering (docs/conditions.md): an :class:`icv.Condition` or a rule
            of them (``a & ~b``) gating the steered arms; each input is decided from its
            arm's prompt, rows it rejects are the unsteered model's, and each result's
            ``fired`` (and the report's "steered rows") says which inputs were steered.
            Every engine: ``vllm`` gives the conditions to its engine (chunked prefill off),
            ``server`` needs them served already (the same files among its vectors).
        **steer_options: ``mode``, ``site``, ``layers``, ``positions`` for :func:`icv.steer`.

    Returns:
        Every method's outputs and scores, with the settings (for the ``trained`` arm:
        ``settings["training"]``, what training did, and ``settings["trained_vector"]``, the
        vector's metadata); ``.markdown()`` and ``.save(folder)`` write the report.

    Raises:
        OptionError: an unknown method or engine, demonstrations missing where a method needs
            them, a ``trained`` vector without the ``trained`` method, references of another
            length than the inputs, or a ``when`` that is not a condition or rule.
        EngineError: the vLLM engine or the server failed (the server's message is kept), or
            the server does not serve a condition ``when`` names.
    """
    inputs = check_inputs(inputs)
    if references is not None and len(references) != len(inputs):
        raise OptionError(f"{len(references)} references for {len(inputs)} inputs")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise OptionError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
    if demos is None and ("icl" in methods or "icl+icv" in methods or ("icv" in methods and vector is None)):
        raise OptionError(
            "demos are needed for the 'icl' and 'icl+icv' methods, and for 'icv' unless a vector is given"
        )
    _check_trained_arm(methods, demos, trained, trained_strengths, train_options)
    pairs = as_demos(demos) if demos is not None else []
    in_prompt = _prompt_demos(prompt_demos, len(pairs)) if "icl+icv" in methods else len(pairs)
    if not isinstance(style, Scorer):
        raise OptionError("style must be an icv.scorers.Scorer (e.g. SentimentScorer())")
    content = content if content is not None else SimilarityScorer()
    extras = (
        list(scorers)
        if scorers is not None
        else [RepetitionScorer(3), PerplexityScorer(model_name=fluency_model_for(model))]
    )
    all_scorers = [style, content, *extras]

    settings: dict[str, Any] = {
        "model": str(getattr(model.config, "_name_or_path", "")),
        "num_inputs": len(inputs),
        "num_demos": len(pairs) if demos is not None else None,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "decoding": "greedy",
        "style_higher_is_better": style.higher_is_better,
        "steer_options": {k: v for k, v in steer_options.items() if isinstance(v, (str, int, float))},
    }
    generator = engine_for(engine, model, tokenizer, url=url, api_key=api_key)
    settings["engine"] = generator.name
    if when is not None:
        when = as_rule(when)
        settings["when"] = when.describe()
        steer_options = {**steer_options, "when": when}
    # Every method's prompts (and strengths), answered by the engine together: one batch for vLLM.
    planned: list[tuple[str, Sweep]] = []
    if "zero-shot" in methods:
        planned.append(("zero-shot", Sweep([paraphrase_prompt(x) for x in inputs])))
    if "icl" in methods:
        planned.append(("icl", Sweep([icl_prompt(pairs, x) for x in inputs])))
    steered = [m for m in STEERED if m in methods]
    if steered:
        if vector is None:
            started = time.perf_counter()
            vector = extract(model, tokenizer, pairs, progress=False, **(extract_options or {}))
            settings["extract_seconds"] = time.perf_counter() - started
        recommended = vector.recommended_strength
        recommended_for = recommended_arm(vector)
        settings.update(recommended_strength=recommended, recommended_for=recommended_for)
        settings["vector"] = vector.metadata
        # Each arm: its sweep, its prompt, and the settings key its sweep is recorded under.
        arms: dict[str, tuple[Sequence[float] | None, Callable[[str], str], str]] = {
            "icv": (strengths, paraphrase_prompt, "strengths"),
            "icl+icv": (
                hybrid_strengths if hybrid_strengths is not None else strengths,
                partial(icl_prompt, pairs[:in_prompt]),
                "hybrid_strengths",
            ),
        }
        if "icl+icv" in methods:
            settings["hybrid_prompt_demos"] = in_prompt
        for method in steered:
            given, prompt, key = arms[method]
            sweep = list(given) if given is not None else list(DEFAULT_STRENGTHS)
            if (
                given is None
                and method == recommended_for
                and recommended is not None
                and recommended not in sweep
            ):
                sweep.append(recommended)
            sweep = sorted(check_strengths(sweep))
            settings[key] = sweep
            planned.append((method, Sweep([prompt(x) for x in inputs], vector, sweep)))
    if "trained" in methods:
        if trained is None:
            started = time.perf_counter()
            trained = _train_here(model, tokenizer, pairs, vector, train_options or {})
            settings["train_seconds"] = time.perf_counter() - started
        sweep = sorted(
            check_strengths(
                list(trained_strengths)
                if trained_strengths is not None
                else [trained.recommended_strength]
                if trained.recommended_strength is not None
                else list(DEFAULT_STRENGTHS)
            )
        )
        settings.update(
            trained_strengths=sweep,
            trained_recommended_strength=trained.recommended_strength,
            training=trained.metadata.get("training"),
            trained_vector=trained.metadata,
        )
        planned.append(("trained", Sweep([paraphrase_prompt(x) for x in inputs], trained, sweep)))
    answered = generator.answer(
        [sweep for _, sweep in planned],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        steer_options=steer_options,
    )
    runs = [
        (method, strength, sweep.prompts, answers[strength])
        for (method, sweep), answers in zip(planned, answered, strict=True)
        for strength in sweep.settings
    ]

    results = []
    for method, strength, prompts, done in runs:
        scored = score_all(all_scorers, done.answers, inputs, references)
        results.append(
            MethodResult(
                method=method,
                strength=strength,
                style_success=success_rate(style, scored[style.name][0]),
                content=scored[content.name][1],
                scores={name: summary for name, (_, summary) in scored.items()},
                prompt_tokens=_mean_tokens(tokenizer, prompts),
                seconds=done.seconds,
                empty=sum(1 for a in done.answers if not a.strip()) / len(done.answers),
                outputs=done.answers,
                fired=done.fired,
            )
        )
    return Evaluation(results, style.name, content.name, settings)


def _check_trained_arm(
    methods: Sequence[str],
    demos: Iterable[object] | None,
    trained: InContextVector | None,
    trained_strengths: Sequence[float] | None,
    train_options: dict[str, Any] | None,
) -> None:
    """The ``trained`` arm's options agree with ``methods`` (said before anything runs)."""
    if "trained" not in methods:
        if trained is not None or trained_strengths is not None or train_options is not None:
            raise OptionError(
                "trained, trained_strengths and train_options set the 'trained' method: add it to methods"
            )
        return
    if trained is not None and not isinstance(trained, InContextVector):
        raise OptionError(f"trained must be an icv.InContextVector, got {type(trained).__name__}")
    if trained is not None and train_options is not None:
        raise OptionError("give a trained vector or train_options to train one here, not both")
    if trained is None and demos is None:
        raise OptionError("the 'trained' method needs a trained vector (trained=) or demos to train on")


def _train_here(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Any],
    vector: InContextVector | None,
    options: dict[str, Any],
) -> InContextVector:
    """:func:`icv.train` on the demonstrations, from the given vector unless ``options`` name a start."""
    return train(model, tokenizer, pairs, **{"init": vector, "progress": False, **options})


def recommended_arm(vector: InContextVector) -> str:
    """The steered arm whose prompt the vector's strength was calibrated for (``icv`` when unknown)."""
    with_demos = vector.metadata.get("calibrated_with_demos")
    return "icl+icv" if with_demos else "icv"


def _prompt_demos(prompt_demos: int | None, available: int) -> int:
    if prompt_demos is None:
        return available
    if isinstance(prompt_demos, bool) or not isinstance(prompt_demos, int) or prompt_demos < 0:
        raise OptionError(f"prompt_demos must be a whole number >= 0, got {prompt_demos!r:.40}")
    if prompt_demos > available:
        raise OptionError(f"prompt_demos is {prompt_demos}, but only {available} demonstrations were given")
    return prompt_demos


def _mean_tokens(tokenizer: Any, prompts: Sequence[str]) -> float:
    return sum(len(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts) / len(prompts)


# -- inputs from a file ----------------------------------------------------------------


def read_inputs(path: str | os.PathLike[str], limit: int | None = None) -> tuple[list[str], list[str] | None]:
    """Inputs (and references, if every line has a second tab-separated column) from a text file."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise OptionError(f"cannot read inputs from '{path}': {error.strerror or error}") from None
    if limit is not None:
        lines = lines[:limit]
    if not lines:
        raise OptionError(f"'{path}' has no inputs")
    cells = [line.split("\t") for line in lines]
    inputs = [c[0].strip() for c in cells]
    with_reference = all(len(c) > 1 and c[1].strip() for c in cells)
    return inputs, ([c[1].strip() for c in cells] if with_reference else None)
