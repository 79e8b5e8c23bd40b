"""Trying vectors from a shell: ``icv generate`` (one prompt) and ``icv generate -i`` (many).

Every setting that ``icv generate`` takes lives in one :class:`Settings`; a prompt
becomes one batched generation with a row per strength (plus an unsteered row with
``--compare``: strength 0 leaves a row bitwise unsteered), printed side by side.
The interactive loop keeps the model loaded and changes settings between prompts
with ``/`` commands.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from .display import side_by_side
from .errors import ICVError, OptionError, PromptFormWarning

# How the command line turns one setting's text into its value (argparse's types).
Parse = Callable[[str], Any]


@dataclass
class Settings:
    """What one generation uses; ``None`` means "the vector's own" (its mode, its strength)."""

    vectors: list[Any]  # WeightedPath: a file and its weight
    strengths: list[float] | None = None
    compare: bool = False
    chat: bool = False
    mode: str | None = None
    layers: list[int] | None = None
    positions: str = "all"
    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    stream: bool | None = None  # None: when the output is a terminal and there is one row
    strict: bool = False  # refuse a vector of a model of another name (else a warning)
    # The paraphrase task with demonstrations in the prompt (ICL + ICV): the prompt is then the
    # sentence to rewrite, after the first ``with_demos`` of ``demos``; None: the prompt as given.
    demos: list[Any] | None = None
    with_demos: int | None = None
    # Conditional steering: condition files that must all match (when) and none (unless).
    when: list[Any] = field(default_factory=list)
    unless: list[Any] = field(default_factory=list)

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class Row:
    label: str
    strength: float


class Trial:
    """A loaded model, the current vector and settings; :meth:`run` answers one prompt."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: Settings,
        read_vectors: Callable[[Sequence[Any]], Any],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._read_vectors = read_vectors
        self.settings = settings
        self.vector = self._fitting(read_vectors(settings.vectors))
        self.rule = condition_rule(settings.when, settings.unless)
        self.decision: Any = None  # with a rule: how the last prompt was decided

    def _fitting(self, vector: Any) -> Any:
        from .steer import check_vector_fits

        check_vector_fits(self.model, vector, strict=self.settings.strict)
        return vector

    def use_vectors(self, specs: Sequence[Any]) -> None:
        """Steer with another (weighted sum of) vector(s) from now on; refused if it does not fit."""
        self.vector = self._fitting(self._read_vectors(specs))
        self.settings = replace(self.settings, vectors=list(specs))

    def rows(self, *, warn: bool = False) -> list[Row]:
        """The batch rows: unsteered first with ``compare``, then one per strength.

        ``warn``: say so (:class:`icv.DefaultStrengthWarning`) where a strength is a guess.
        """
        from .steer import injection_of
        from .strength import planned_strength, warn_default

        mode, site = injection_of(self.vector, self.settings.mode)
        given: Sequence[float | None] = self.settings.strengths or [None]
        rows = [Row("unsteered", 0.0)] if self.settings.compare else []
        for value in given:
            planned = planned_strength(self.vector, mode, site, value)
            if warn:
                warn_default(self.vector, planned, mode)
            rows.append(Row(planned.label(), planned.value))
        return rows

    def prompt_text(self, prompt: str) -> str:
        """What the model reads for ``prompt``: as given, in the chat template, or in the paraphrase
        task after ``with_demos`` demonstrations (refused together with chat)."""
        from .prompts import chat_prompt, icl_prompt

        settings = self.settings
        if settings.with_demos is None:
            return chat_prompt(self.tokenizer, prompt) if settings.chat else prompt
        if settings.chat:
            raise OptionError("demonstrations go into the paraphrase prompt, not a chat turn: drop chat")
        demos = settings.demos or []
        if settings.with_demos > len(demos):
            raise OptionError(
                f"{settings.with_demos} demonstrations asked for in the prompt, {len(demos)} given"
            )
        return icl_prompt(demos[: settings.with_demos], prompt)

    def _warn_prompt_form(self, rows: list[Row]) -> None:
        """Say where the prompt does not fit the vector: its recommended strength calibrated for
        the other form, or demonstrations in the prompt that are not the vector's own."""
        from .calibrate import demos_mismatch, prompt_form_mismatch

        with_demos = self.settings.with_demos or 0
        recommended = any(row.label.endswith("(recommended)") for row in rows)
        problems = [
            prompt_form_mismatch(self.vector, with_demos) if recommended else None,
            demos_mismatch(self.vector, self.settings.demos or []) if with_demos else None,
        ]
        for problem in problems:
            if problem is not None:
                warnings.warn(problem, PromptFormWarning, stacklevel=3)

    def run(self, prompt: str, out: TextIO) -> None:
        """Generate for ``prompt`` with the current settings and print the result to ``out``."""
        from .generation import complete
        from .prompts import cut_answer
        from .sweep import ANSWER_STOPS

        settings = self.settings
        rows = self.rows(warn=True)
        text = self.prompt_text(prompt)
        self._warn_prompt_form(rows)
        task = settings.with_demos is not None  # the paraphrase task: the answer ends at its quote
        if settings.stream and len(rows) > 1:
            raise OptionError(
                "streaming shows one completion as it comes: drop --compare, or give one strength"
            )
        stream = settings.stream if settings.stream is not None else len(rows) == 1 and out.isatty()
        options: dict[str, Any] = {"positions": settings.positions, "strict": settings.strict}
        if settings.mode:
            options["mode"] = settings.mode
        if settings.layers is not None:
            options["layers"] = settings.layers
        decisions: list[Any] = []
        if self.rule is not None:
            options["when"] = self.rule
        if settings.seed is not None:
            import torch

            torch.manual_seed(settings.seed)
        streamer = text_streamer(self.tokenizer, out) if stream else None
        outputs = complete(
            self.model,
            self.tokenizer,
            [text] * len(rows),
            vector=self.vector,
            strength=[row.strength for row in rows],
            max_new_tokens=settings.max_new_tokens,
            batch_size=len(rows),
            progress=False,
            do_sample=settings.sampling,
            temperature=settings.temperature if settings.sampling else None,
            top_p=settings.top_p if settings.sampling else None,
            streamer=streamer,
            stop_strings=list(ANSWER_STOPS) if task else None,
            decisions=decisions,
            **options,
        )
        self.decision = decisions[0] if decisions else None
        if streamer is not None:
            return
        if task:
            outputs = [cut_answer(output) for output in outputs]
        if len(rows) == 1 and not settings.compare:
            print(outputs[0], file=out)
        else:
            print(
                side_by_side(None, {row.label: [text] for row, text in zip(rows, outputs, strict=True)}),
                file=out,
            )


def condition_rule(when: Sequence[Any], unless: Sequence[Any]) -> Any:
    """The rule the command line's conditions make: every ``when`` matches and no ``unless`` does.

    Each entry is a condition (a file, a ``save_pretrained`` folder or a Hub id) or a rule
    of them written with ``&``, ``|``, ``~`` and parentheses (``"toxic.safetensors &
    ~question.safetensors"``); ``None`` without any.
    """
    rule: Any = None
    for text, negate in [*((p, False) for p in when), *((p, True) for p in unless)]:
        term = read_rule(str(text))
        term = ~term if negate else term
        rule = term if rule is None else rule & term
    return rule


def read_rule(text: str) -> Any:
    """A condition named by ``text`` (a path or Hub id), or the rule ``text`` writes with such names.

    Each name in a rule is read once, however often the rule names it (``a & ~a`` reads one file).
    """
    from .condition import parse_rule, read_condition

    if os.path.exists(text) or not any(c in text for c in "&|~() "):
        return read_condition(text)
    read: dict[str, Any] = {}

    def lookup(name: str) -> Any:
        if name not in read:
            read[name] = read_condition(name)
        return read[name]

    return parse_rule(text, lookup)


def describe_decision(decision: Any) -> str:
    """One line: whether the prompt was steered, and its score under each condition."""
    scores = ", ".join(f"{name} {values[0]:.4f}" for name, values in decision.scores.items())
    verdict = "steered" if decision.fired[0] else "not steered (the unsteered model's answer)"
    return f"condition: {verdict}; score {scores}"


def text_streamer(tokenizer: Any, out: TextIO) -> Any:
    """transformers' TextStreamer, writing to ``out``: the new text as it is generated, then a line break."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# -- the interactive loop ---------------------------------------------------------------

HELP = """\
Type a prompt to generate with the current settings, or a command:
  /strength S[,S...]     strengths, side by side (no value: the vector's own)
  /vector VEC[:W] ...    steer with other vectors (a weighted sum), same model
  /compare on|off        an unsteered row too
  /chat on|off           wrap prompts in the chat template
  /demos K               rewrite prompts in the paraphrase task after K of --demos (no value: off)
  /mode rotate|add       how to apply the vector (no value: the vector's own)
  /layers LIST           steer only these layers, e.g. 10-20 or -8--1 (no value: all)
  /temperature T         0: greedy; above 0: sample (with /top-p P and /seed N)
  /top-p P    /seed N    /tokens N (new tokens per answer)
  /settings   /help   /quit"""


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"'{text}': say on or off")
    return text == "on"


def _choice(*choices: str) -> Parse:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"'{text}': choose one of {', '.join(choices)}")
        return text

    return parse


def describe(settings: Settings, trial: Trial) -> str:
    """The settings in one line (``/settings``)."""
    rows = ", ".join(row.label for row in trial.rows())
    sampling = "greedy"
    if settings.sampling:
        sampling = f"sampling at temperature {settings.temperature:g}"
        sampling += f", top-p {settings.top_p:g}" if settings.top_p else ""
        sampling += f", seed {settings.seed}" if settings.seed is not None else ""
    layers = "all layers" if settings.layers is None else f"layers {settings.layers}"
    vectors = " + ".join(f"{v.path}:{v.weight:g}" for v in settings.vectors)
    mode = settings.mode or trial.vector.metadata["injection_mode"]
    demos = "" if settings.with_demos is None else f"{settings.with_demos} demos in the prompt; "
    return (
        f"vector {vectors} ({trial.vector.name}); rows: {rows}; mode {mode}; {layers}; {demos}"
        f"chat {'on' if settings.chat else 'off'}; {sampling}; {settings.max_new_tokens} new tokens"
    )


def interact(trial: Trial, parsers: dict[str, Parse], stdin: TextIO, out: TextIO, err: TextIO) -> int:
    """Read prompts and ``/`` commands from ``stdin`` until ``/quit`` or the end of input."""
    prompting = stdin.isatty()
    if prompting:
        print(f"icv: interactive; /help lists the commands. {describe(trial.settings, trial)}", file=err)
    while True:
        if prompting:
            err.write("icv> ")
            err.flush()
        line = stdin.readline()
        if not line:
            return 0
        line = line.rstrip("\n")
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                if _command(trial, line, parsers, out) == "quit":
                    return 0
            else:
                trial.run(line, out)
            out.flush()
        except (ICVError, argparse.ArgumentTypeError) as error:
            print(f"icv: error: {error}", file=err)


def _command(trial: Trial, line: str, parsers: dict[str, Parse], out: TextIO) -> str | None:
    name, _, rest = line[1:].strip().partition(" ")
    rest = rest.strip()
    settings = trial.settings
    if name in ("quit", "exit", "q"):
        return "quit"
    if name == "help":
        print(HELP, file=out)
    elif name == "settings":
        print(describe(settings, trial), file=out)
    elif name == "vector":
        if not rest:
            raise OptionError("/vector needs at least one VEC[:WEIGHT]")
        trial.use_vectors([parsers["vector"](part) for part in rest.split()])
    elif name in SETTERS:
        attribute, parse_name, empty = SETTERS[name]
        value = (
            empty
            if not rest
            else (parsers[parse_name] if parse_name in parsers else BUILTIN[parse_name])(rest)
        )
        trial.settings = replace(settings, **{attribute: value})
    else:
        raise OptionError(f"unknown command /{name}: /help lists them")
    return None


# command -> (Settings attribute, parser name, value when given nothing)
SETTERS: dict[str, tuple[str, str, Any]] = {
    "strength": ("strengths", "strengths", None),
    "compare": ("compare", "on_off", True),
    "chat": ("chat", "on_off", True),
    "demos": ("with_demos", "demo_count", None),
    "mode": ("mode", "mode", None),
    "layers": ("layers", "layers", None),
    "temperature": ("temperature", "temperature", 0.0),
    "top-p": ("top_p", "top_p", None),
    "seed": ("seed", "seed", None),
    "tokens": ("max_new_tokens", "tokens", 40),
}
BUILTIN: dict[str, Parse] = {"on_off": _on_off, "mode": _choice("rotate", "add")}
