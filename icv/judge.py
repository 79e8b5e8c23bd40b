"""Any style, judged: a judge model rates each output through an OpenAI-compatible chat endpoint.

The style is given in words (``"formal English"``, ``"Shakespearean"``); the judge answers
AxBench's three ratings for each output, each 0, 1 or 2:

* ``concept``: how strongly the output shows the style,
* ``instruction``: how well it keeps the source's content (the input it rewrites),
* ``fluency``: whether it is well-formed language,

and the output's score is their harmonic mean (AxBench's combination: a 0 anywhere is 0),
divided by 2 so that it lies in [0, 1] like the other style scorers' values.

The prompts are icv's own, kept in ``icv/judge_templates`` (package data); each asks for a
last line ``Rating: [[N]]``.  Answers are parsed strictly (:func:`parse_rating`): an answer
without exactly one well-formed rating is *unparsable*, counted in :attr:`JudgeScorer.stats`
and reported with an :class:`UnparsableRatingWarning`, and the output's score is ``nan`` (left
out of the mean), never a guess.

Requests go out at most ``concurrency`` at a time, with retries (and back-off) on connection
errors, timeouts, 429 and 5xx; a 4xx other than those is the caller's mistake and stops with a
:class:`icv.ScorerError`.  Every answer is cached on disk, keyed by the endpoint, the judge
model, the prompt (its template with the texts filled in) and the generation settings, so a
re-run sends nothing, and a run stopped half-way resumes where it stopped.  Only the standard
library is used (urllib, threads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from .errors import OptionError, ScorerError
from .scorers import Texts, _CheckedScorer

RATINGS = ("concept", "instruction", "fluency")
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Transient answers worth another try; any other 4xx is a mistake in the request.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# A judge's reply is a short JSON document; a larger one is not read past this.
MAX_REPLY_BYTES = 1 << 20
# Threads (requests in flight) one scorer may start, at most.
MAX_CONCURRENCY = 256
# Seconds a Retry-After header may make us wait, at most.
MAX_RETRY_AFTER = 30.0
# One rating line: `Rating: [[N]]`, whatever stands between the brackets (checked after).
_RATING = re.compile(r"rating\s*:\s*\[\[(.*?)\]\]", re.IGNORECASE | re.DOTALL)
_VALUES = {"0": 0, "1": 1, "2": 2}


class UnparsableRatingWarning(UserWarning):
    """Some judge answers held no strict rating: those outputs score ``nan`` (counted, not guessed)."""


def parse_rating(answer: object) -> int | None:
    """The judge's rating (0, 1 or 2) from its answer, or ``None`` when it is not strictly there.

    Strict: the answer must hold at least one ``Rating: [[N]]`` line, every such line must hold
    exactly ``0``, ``1`` or ``2`` (spaces around it allowed), and they must agree.  An answer with
    none, with ``[[1.5]]``, ``[[two]]``, ``[[N]]`` (the template's placeholder echoed) or two
    different ratings is unparsable.

    Args:
        answer: the judge's reply text (anything else is unparsable).
    """
    if not isinstance(answer, str):
        return None
    found = _RATING.findall(answer)
    if not found:
        return None
    values = {_VALUES.get(text.strip()) for text in found}
    if len(values) != 1 or None in values:
        return None
    return values.pop()


def harmonic_mean(ratings: Sequence[int]) -> float:
    """AxBench's combined score of 0-2 ratings: their harmonic mean, 0 if any rating is 0.

    Args:
        ratings: the ratings, each 0, 1 or 2.
    """
    if not ratings:
        return math.nan
    if any(r <= 0 for r in ratings):
        return 0.0
    return len(ratings) / sum(1.0 / r for r in ratings)


@dataclass(frozen=True)
class JudgeRating:
    """One output's three ratings (``None``: the judge's answer was unparsable)."""

    concept: int | None
    instruction: int | None
    fluency: int | None

    @property
    def score(self) -> float:
        """The harmonic mean of the three, in [0, 2] (AxBench's scale); ``nan`` if one is missing."""
        values = [self.concept, self.instruction, self.fluency]
        if any(v is None for v in values):
            return math.nan
        return harmonic_mean([v for v in values if v is not None])


@dataclass
class JudgeStats:
    """What a :class:`JudgeScorer` did, summed over its calls."""

    ratings: int = 0  # ratings asked for (3 per non-empty output)
    cache_hits: int = 0  # of those, answered from the cache
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # of those, repeats after a transient failure
    unparsable: int = 0  # answers without a strict rating

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def load_templates(folder: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The three prompt templates (``concept``, ``instruction``, ``fluency``), as text.

    Each is a :class:`string.Template` with ``$style``, ``$output`` and (instruction)
    ``$source``.

    Args:
        folder: a folder of ``concept.txt``, ``instruction.txt`` and ``fluency.txt`` of your
            own; ``None``: icv's (package data).
    """
    templates = {}
    for rating in RATINGS:
        try:
            if folder is None:
                text = (resources.files("icv") / "judge_templates" / f"{rating}.txt").read_text("utf-8")
            else:
                text = (Path(folder) / f"{rating}.txt").read_text("utf-8")
        except OSError as error:
            raise OptionError(f"cannot read the judge template '{rating}.txt': {error}") from None
        if "$output" not in text:
            raise OptionError(f"the judge template '{rating}.txt' has no $output placeholder")
        templates[rating] = text
    return templates


class JudgeScorer(_CheckedScorer):
    """A style scorer for any style in words, rated by a judge model over HTTP.

    Works with any OpenAI-compatible chat endpoint (``icv serve``, vLLM, llama.cpp's server,
    OpenAI ...).  Each output's value is AxBench's harmonic mean of the three ratings divided
    by 2 (in [0, 1]); ``nan`` where an answer was unparsable (see :attr:`stats`).  An empty
    output scores 0 without a request.

    Args:
        style: the style (AxBench's concept) in words, e.g. ``"formal English"``.
        url: the endpoint's base, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions``
            is appended).
        model: the judge model's name, as the endpoint knows it.
        api_key_env: the environment variable holding the API key (read at each request;
            unset: no key is sent, as local servers want).
        concurrency: requests in flight at most.
        retries: further tries of a request after a transient failure.
        timeout: seconds to wait for one answer.
        backoff: seconds before the first retry, doubled at each further one.
        max_tokens: the judge's answer length, at most.
        cache: ``True``: answers cached under ``$XDG_CACHE_HOME/icv/judge``
            (``~/.cache/icv/judge``); a folder: there; ``False``: no cache.
        templates: a folder of prompt templates of your own (see :func:`load_templates`).
        name: the scorer's name in reports.
    """

    higher_is_better = True
    needs_sources = True

    def __init__(
        self,
        style: str,
        *,
        url: str,
        model: str,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        concurrency: int = 4,
        retries: int = 3,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_tokens: int = 128,
        cache: bool | str | os.PathLike[str] = True,
        templates: str | os.PathLike[str] | None = None,
        name: str = "judge",
    ) -> None:
        if not isinstance(style, str) or not style.strip():
            raise OptionError("the judged style must be given in words, e.g. 'formal English'")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise OptionError(f"the judge URL must start with http:// or https://, got {url!r:.80}")
        if not isinstance(model, str) or not model:
            raise OptionError("name the judge model (--judge-model), as its endpoint knows it")
        for value, what, low in (
            (concurrency, "concurrency", 1),
            (retries, "retries", 0),
            (max_tokens, "max_tokens", 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(f"judge {what} must be a whole number >= {low}, got {value!r:.40}")
        if concurrency > MAX_CONCURRENCY:
            raise OptionError(
                f"judge concurrency is {concurrency}: at most {MAX_CONCURRENCY} requests in flight"
            )
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (timeout, backoff))
        if not numbers or not (
            math.isfinite(timeout) and timeout > 0 and math.isfinite(backoff) and backoff >= 0
        ):
            raise OptionError("judge timeout must be > 0 and backoff >= 0 seconds")
        self.style = style.strip()
        self.url = url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.max_tokens = max_tokens
        self.name = name
        self.templates = load_templates(templates)
        self.cache_dir = _cache_dir(cache)
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    # -- scoring -------------------------------------------------------------------------

    def _values(self, texts: Texts) -> list[float]:
        return [r.score / 2.0 for r in self.rate(texts.outputs, texts.sources)]

    def rate(self, outputs: Sequence[str], sources: Sequence[str] | None) -> list[JudgeRating]:
        """The three ratings of each output (empty outputs: all 0, no request).

        Args:
            outputs: the texts to rate.
            sources: the input each output rewrites, one per output.
        """
        self.check(outputs, sources, None)
        assert sources is not None  # check() refuses None: sources are needed
        prompts: dict[tuple[int, str], str] = {}
        for index, (output, source) in enumerate(zip(outputs, sources, strict=True)):
            if output.strip():
                for rating in RATINGS:
                    prompts[index, rating] = self._prompt(rating, output, source)
        answers = self._answers(sorted(set(prompts.values())))
        unparsable = 0
        rated: list[JudgeRating] = []
        for index, output in enumerate(outputs):
            if not output.strip():
                rated.append(JudgeRating(0, 0, 0))
                continue
            values = {}
            for rating in RATINGS:
                values[rating] = parse_rating(answers[prompts[index, rating]])
                unparsable += values[rating] is None
            rated.append(JudgeRating(**values))
        with self._lock:
            self.stats.unparsable += unparsable
        if unparsable:
            warnings.warn(
                f"judge '{self.model}': {unparsable} of {len(prompts)} answers held no strict "
                "'Rating: [[0|1|2]]'; those outputs score nan and are left out of the mean "
                "(a larger max_tokens, or a stronger judge, helps)",
                UnparsableRatingWarning,
                stacklevel=3,
            )
        return rated

    def _prompt(self, rating: str, output: str, source: str) -> str:
        # safe_substitute: a '$' in the texts is theirs; the texts are filled in last, once.
        return Template(self.templates[rating]).safe_substitute(
            style=self.style, output=output, source=source
        )

    def _answers(self, prompts: Sequence[str]) -> dict[str, str]:
        """The judge's answer to each distinct prompt, from the cache or over HTTP."""
        answers: dict[str, str] = {}
        missing = []
        for prompt in prompts:
            cached = self._cached(prompt)
            if cached is None:
                missing.append(prompt)
            else:
                answers[prompt] = cached
        with self._lock:
            self.stats.ratings += len(prompts)
            self.stats.cache_hits += len(prompts) - len(missing)
        if missing:
            # After one request fails for good, those not yet sent are not sent (their error
            # would only repeat it); those answered are cached, so a re-run resumes.
            failed = threading.Event()

            def ask(prompt: str) -> str:
                if failed.is_set():
                    return ""
                try:
                    return self._ask(prompt)
                except BaseException:
                    failed.set()
                    raise

            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(missing))) as pool:
                for prompt, answer in zip(missing, pool.map(ask, missing), strict=True):
                    answers[prompt] = answer
        return answers

    # -- HTTP ----------------------------------------------------------------------------

    def _ask(self, prompt: str) -> str:
        """One rating over HTTP (with retries), cached once answered."""
        body = json.dumps(self._body(prompt)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        endpoint = f"{self.url}/chat/completions"
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats.requests += 1
                self.stats.retries += attempt > 0
            last = attempt == self.retries
            try:
                request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read(MAX_REPLY_BYTES + 1)
                answer = _answer_text(raw, endpoint)
            except urllib.error.HTTPError as error:
                detail = error.read(300).decode("utf-8", "replace")
                if error.code not in RETRY_STATUS or last:
                    raise ScorerError(self._refusal(error.code, detail)) from None
                time.sleep(self._wait(attempt, error.headers.get("Retry-After")))
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if last:
                    reason = getattr(error, "reason", error)
                    raise ScorerError(
                        f"the judge at {endpoint} did not answer after {self.retries + 1} tries: {reason}; "
                        "is the server up? (answers received so far are cached: a re-run resumes)"
                    ) from None
                time.sleep(self._wait(attempt, None))
                continue
            self._store(prompt, answer)
            return answer
        raise AssertionError("unreachable: the last try returns or raises")

    def _body(self, prompt: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def _refusal(self, status: int, detail: str) -> str:
        hint = ""
        if status in (401, 403):
            hint = (
                f"; set the judge's API key in ${self.api_key_env}"
                if self.api_key_env
                else "; it wants an API key"
            )
        elif status == 404:
            hint = (
                f"; is {self.url} the endpoint's base (ending in /v1), and '{self.model}' a model it serves?"
            )
        return f"the judge at {self.url} answered HTTP {status}{hint}: {detail.strip()[:300]}"

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        try:
            asked = float(retry_after) if retry_after is not None else math.nan
        except ValueError:
            asked = math.nan
        if math.isfinite(asked) and asked >= 0:
            return min(asked, MAX_RETRY_AFTER)
        return self.backoff * 2**attempt

    # -- the cache -----------------------------------------------------------------------

    def cache_key(self, prompt: str) -> str:
        """The cache's key for one prompt: a hash of the endpoint, judge model, settings and prompt.

        Args:
            prompt: the filled-in prompt (its template and texts).
        """
        identity = json.dumps([self.url, self._body(prompt)], sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def _path(self, prompt: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = self.cache_key(prompt)
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, prompt: str) -> str | None:
        path = self._path(prompt)
        if path is None:
            return None
        try:
            stored = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None  # absent, or damaged: asked again (and rewritten)
        answer = stored.get("answer") if isinstance(stored, dict) else None
        return answer if isinstance(answer, str) else None

    def _store(self, prompt: str, answer: str) -> None:
        path = self._path(prompt)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Whole or absent: another run reading it never sees half a file.
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".judge-", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as sink:
                json.dump({"model": self.model, "answer": answer}, sink, ensure_ascii=False)
            os.replace(temporary, path)
        except OSError as error:
            warnings.warn(f"the judge cache at {self.cache_dir} is not writable: {error}", stacklevel=2)

    def __repr__(self) -> str:
        return f"<JudgeScorer '{self.name}' style={self.style!r} judge={self.model!r} at {self.url}>"


def _answer_text(raw: bytes, endpoint: str) -> str:
    """The first choice's message content of an OpenAI chat completion, or a clear error."""
    if len(raw) > MAX_REPLY_BYTES:
        raise ScorerError(f"the judge at {endpoint} sent a reply of over {MAX_REPLY_BYTES} bytes")
    try:
        message = json.loads(raw)["choices"][0]["message"]
        content = message["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ScorerError(
            f"the judge at {endpoint} did not answer as an OpenAI chat completion: {raw[:200]!r}"
        ) from None
    if content is None:
        return ""  # a refusal or a reasoning-only answer: an answer without a rating
    if not isinstance(content, str):
        raise ScorerError(f"the judge at {endpoint} answered a non-text message: {str(content)[:200]}")
    return content


def _cache_dir(cache: bool | str | os.PathLike[str]) -> Path | None:
    if cache is False:
        return None
    if cache is True:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "icv" / "judge"
    if isinstance(cache, (str, os.PathLike)):
        return Path(cache)
    raise OptionError(f"judge cache must be True, False or a folder, got {cache!r:.40}")
