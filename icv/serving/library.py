"""The vectors a server has loaded, and what a request's steering means with them.

A server loads vector files once (icv safetensors files, or GGUF control vectors);
each is known by its file's stem (``positive.safetensors`` -> ``positive``), a folder that
``save_pretrained`` wrote by the folder's name, a Hub id by its repository's name
(``someone/positive`` -> ``positive``).  Conditions (:class:`icv.Condition`) come the same
ways: condition files, the folders ``Condition.save_pretrained`` writes, their Hub ids.
Vectors made for another model are kept aside with the reason, so a request
naming one is told why it cannot be served rather than that it does not exist.
A request's steering becomes one vector, ``v1 * s1 + v2 * s2 + ...``, applied at
strength 1, exactly what the same arithmetic does in Python.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PureWindowsPath
from typing import Any

from torch import nn

from ..condition import Condition, Rule, is_condition_file, parse_rule, to_bytes as condition_bytes
from ..errors import ICVError, ModelMismatchError, OptionError, RequestError, VectorFileError
from ..metadata import check_same_model
from ..vector import InContextVector
from .request import WHEN_FIELD, SteeringSpec, SteeringTerm

VECTOR_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class ModelShape:
    """What decides whether a vector fits a model (engines describe their model with it)."""

    model_type: str
    hidden_size: int
    num_layers: int
    model_name: str = ""

    @classmethod
    def of(cls, model: nn.Module) -> ModelShape:
        """The shape of a transformers model (as :func:`icv.steer` sees it)."""
        from ..layers import decoder_layers, hidden_size_of
        from ..models import model_name_of

        return cls(
            model_type=str(getattr(model.config, "model_type", "")),
            hidden_size=hidden_size_of(model),
            num_layers=len(decoder_layers(model)),
            model_name=model_name_of(model),
        )

    def as_metadata(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "model_name": self.model_name,
        }


@dataclass(frozen=True)
class LoadedVector:
    name: str
    vector: InContextVector
    path: str  # the file it was loaded from; "" for one added while serving (never shown to clients)
    sha256: str  # of the file's bytes: what a cache key must change with

    @property
    def origin(self) -> str:
        """``"file"`` (loaded at start, permanent) or ``"added"`` (uploaded or extracted, deletable)."""
        return "file" if self.path else "added"


def vector_files(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """The vector files named by ``paths``, each with the name it is served under.

    Args:
        paths: vector (or condition) files, folders of them (not recursive), folders that
            :meth:`InContextVector.save_pretrained` or :meth:`icv.Condition.save_pretrained`
            wrote, or Hub ids (``owner/name``, of either kind, fetched through the Hub's cache).

    Returns:
        ``(name, file)`` pairs: a file's stem, a pretrained folder's or a Hub repository's name.

    Raises:
        VectorFileError: a path that is nothing, a Hub id that cannot be fetched, or a pretrained
            folder (or Hub repository) whose vector.safetensors holds a condition.
    """
    from ..hub import CONDITION_FILE, VECTOR_FILE, is_hub_id, resolve

    files: list[tuple[str, Path]] = []
    for given in paths:
        entry = Path(given)
        if entry.is_dir() and any((entry / f).is_file() for f in (VECTOR_FILE, CONDITION_FILE)):
            files.append(pretrained_file(entry.resolve().name, resolve(entry, kind="any")))
        elif entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in VECTOR_SUFFIXES and p.is_file())
            files.extend((p.stem, p) for p in found)
        elif entry.is_file():
            files.append((entry.stem, entry))
        elif is_hub_id(os.fspath(given)):
            files.append(
                pretrained_file(os.fspath(given).split("/")[1], resolve(os.fspath(given), kind="any"))
            )
        else:
            raise VectorFileError(
                f"no vector file or folder at '{entry}', and it is not a Hub id (owner/name)"
            )
    return files


def pretrained_file(name: str, file: Path) -> tuple[str, Path]:
    """``(name, file)`` of a pretrained folder or Hub id, refused if its file is not the kind its name says.

    A condition saved as ``vector.safetensors`` would otherwise be served as a condition under a
    vector's name; a vector in ``condition.safetensors`` is refused by the condition's reader.
    """
    from ..hub import VECTOR_FILE

    if file.name == VECTOR_FILE and is_condition_file(file):
        raise VectorFileError(
            f"'{name}': its {VECTOR_FILE} holds a condition, not a vector; save it again with "
            "icv.Condition.save_pretrained (which writes condition.safetensors)"
        )
    return name, file


def read_vector_file(path: Path, shape: ModelShape | None = None) -> InContextVector:
    """An icv safetensors vector or a GGUF control vector (recognised by its first bytes).

    ``shape``: the served model, whose depth bounds a GGUF file's blocks before anything
    is allocated from them (and pads a file that leaves out the last blocks).
    """
    from ..gguf import import_gguf, is_gguf_file

    if is_gguf_file(path):
        return import_gguf(path, num_layers=None if shape is None else shape.num_layers)
    return InContextVector.load(path)


class VectorLibrary:
    """Named vectors for one model; turns a :class:`SteeringSpec` into the vector it means."""

    def __init__(
        self,
        shape: ModelShape,
        vectors: Mapping[str, LoadedVector] | None = None,
        unfit: Mapping[str, str] | None = None,
        conditions: Mapping[str, Condition] | None = None,
    ) -> None:
        self.shape = shape
        self._vectors = dict(vectors or {})
        self._unfit = dict(unfit or {})
        # Conditions (icv.Condition files among the vector files): what steering_when names.
        self._conditions = dict(conditions or {})
        # Of each condition's file as icv writes it: how a client (the server engine) finds its own.
        self._condition_digests = {
            name: hashlib.sha256(condition_bytes(condition)).hexdigest()
            for name, condition in self._conditions.items()
        }
        self._compose = lru_cache(maxsize=256)(self._compose_uncached)

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]], shape: ModelShape) -> VectorLibrary:
        """Load every vector file under ``paths``; two files of the same stem are an error."""
        from ..hub import CONDITION_FILE

        vectors: dict[str, LoadedVector] = {}
        unfit: dict[str, str] = {}
        conditions: dict[str, Condition] = {}
        for name, file in vector_files(paths):
            if name in vectors or name in unfit or name in conditions:
                raise VectorFileError(f"two vector files are named '{name}' ('{file}' and an earlier one)")
            if is_condition_file(file) or file.name == CONDITION_FILE:
                condition = Condition.load(file)  # a vector's file here is refused in its own words
                try:
                    check_same_model(condition.metadata, shape.as_metadata(), what=f"condition '{name}'")
                except ModelMismatchError as error:
                    unfit[name] = str(error)
                    continue
                conditions[name] = condition
                continue
            vector = read_vector_file(file, shape)
            try:
                # The reason is shown to clients: the name, never the server's path.
                check_same_model(vector.metadata, shape.as_metadata(), what=f"vector '{name}'")
            except ModelMismatchError as error:
                unfit[name] = str(error)
                continue
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            vectors[name] = LoadedVector(name, vector, str(file), digest)
        return cls(shape, vectors, unfit, conditions)

    def add(self, name: str, vector: InContextVector, path: str = "") -> None:
        """Serve ``vector`` under ``name`` (replacing one of that name); it must fit the model.

        ``path``: the file it came from, if it is to be permanent (not deletable).
        """
        check_same_model(vector.metadata, self.shape.as_metadata(), what=f"vector '{name}'")
        digest = hashlib.sha256(
            vector.directions.numpy().tobytes() + repr(sorted(vector.metadata.items())).encode()
        ).hexdigest()
        self._vectors[name] = LoadedVector(name, vector, path, digest)
        self._unfit.pop(name, None)
        self._compose.cache_clear()

    def remove(self, name: str) -> None:
        """Stop serving ``name``, a vector added while serving (those loaded from files stay)."""
        if name in self._unfit or self.get(name).origin == "file":
            raise RequestError(
                f"vector '{name}' was loaded from a file when the server started and cannot be deleted; "
                "only vectors uploaded or extracted while it runs can",
                param="name",
                code="vector_not_deletable",
                status=403,
            )
        del self._vectors[name]
        self._compose.cache_clear()

    @property
    def names(self) -> list[str]:
        return sorted(self._vectors)

    @property
    def injections(self) -> set[tuple[str, str]]:
        """The ``(mode, site)`` pairs the loaded vectors inject with."""
        return {
            (loaded.vector.metadata["injection_mode"], loaded.vector.metadata["injection_site"])
            for loaded in self._vectors.values()
        }

    @property
    def unfit(self) -> dict[str, str]:
        """Vectors that were found but belong to another model: name -> why."""
        return dict(self._unfit)

    def get(self, name: str, *, param: str = "vector") -> LoadedVector:
        """The loaded vector ``name``, or a :class:`RequestError` that says why there is none."""
        if name in self._vectors:
            return self._vectors[name]
        if name in self._unfit:
            raise RequestError(
                f"vector '{name}' cannot steer this model: {self._unfit[name]}",
                param=param,
                code="vector_mismatch",
            )
        known = ", ".join(self.names) or "none"
        hint = f"; '{name}' is a condition: name it in {WHEN_FIELD}" if name in self._conditions else ""
        raise RequestError(
            f"no vector named '{name}' is loaded (loaded: {known}){hint}",
            param=param,
            code="vector_not_found",
        )

    @property
    def condition_names(self) -> list[str]:
        """The conditions served, by name."""
        return sorted(self._conditions)

    def condition(self, name: str) -> Condition:
        """The condition ``name``, or a :class:`RequestError` (400) that says why there is none."""
        if name in self._conditions:
            return self._conditions[name]
        if name in self._unfit:
            raise RequestError(
                f"condition '{name}' cannot decide for this model: {self._unfit[name]}",
                param=WHEN_FIELD,
                code="vector_mismatch",
            )
        known = ", ".join(self.condition_names) or "none"
        hint = f"; '{name}' is a steering vector: name it in steering" if name in self._vectors else ""
        raise RequestError(
            f"no condition named '{name}' is loaded (loaded: {known}){hint}",
            param=WHEN_FIELD,
            code="condition_not_found",
        )

    def rule(self, text: str) -> Rule:
        """The rule a request's ``steering_when`` writes, with the library's conditions (400 if it cannot be)."""
        try:
            return parse_rule(text, self.condition)
        except OptionError as error:
            raise RequestError(str(error), param=WHEN_FIELD, code="invalid_steering") from None

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded vector's name, origin, metadata and strengths (``GET /v1/vectors``; no server path)."""
        return [
            {
                "name": loaded.name,
                "origin": loaded.origin,
                "sha256": loaded.sha256,
                "recommended_strength": loaded.vector.recommended_strength,
                "default_strength": default_strength(loaded.vector),
                "metadata": public_metadata(loaded.vector.metadata),
            }
            for loaded in (self._vectors[name] for name in self.names)
        ]

    def describe_conditions(self) -> list[dict[str, Any]]:
        """Every served condition: its name, how it decides, what the grid search found (``GET /v1/vectors``)."""
        return [
            {
                "name": name,
                "kind": "condition",
                "sha256": self._condition_digests[name],
                "layer": condition.layer,
                "threshold": condition.threshold,
                "comparison": condition.comparison,
                "positions": condition.positions,
                "f1": condition.f1,
                "metadata": public_metadata(condition.metadata),
            }
            for name, condition in sorted(self._conditions.items())
        ]

    def resolve(self, spec: SteeringSpec) -> SteeringSpec:
        """``spec`` with every vector checked and every strength made explicit."""
        terms = []
        for i, term in enumerate(spec.terms):
            loaded = self.get(term.vector, param=f"steering[{i}].vector")
            strength = default_strength(loaded.vector) if term.strength is None else term.strength
            terms.append(SteeringTerm(term.vector, strength))
        if spec.when is not None:
            self.rule(spec.when)  # every name it uses is a served condition
        return SteeringSpec(tuple(terms), spec.positions, spec.when)

    def compose(self, spec: SteeringSpec) -> InContextVector:
        """The one vector ``spec`` means, to be applied at strength 1: ``sum(v_i * s_i)``."""
        return self._compose(self.resolve(spec).terms)

    def _compose_uncached(self, terms: tuple[SteeringTerm, ...]) -> InContextVector:
        total: InContextVector | None = None
        for term in terms:
            try:
                scaled = self._vectors[term.vector].vector * term.strength
            except ICVError as error:  # the product leaves float32's range
                raise RequestError(
                    f"vector '{term.vector}' at strength {term.strength:g}: {error}",
                    param="steering",
                    code="invalid_strength",
                ) from None
            try:
                total = scaled if total is None else total + scaled
            except ICVError as error:  # vectors of different injection modes, a sum past float32
                raise RequestError(
                    f"these vectors cannot be combined: {error}",
                    param="steering",
                    code="incompatible_vectors",
                ) from None
        assert total is not None
        return total

    def fingerprint(self, spec: SteeringSpec | None) -> str:
        """A key that changes with the steering's exact effect (files, strengths, positions).

        Engines that cache computed prefixes (vLLM's prefix cache) key them by it, so a
        prefix computed under one steering is never reused under another.
        """
        if spec is None:
            return "unsteered"
        resolved = self.resolve(spec)
        parts = [f"{self._vectors[t.vector].sha256}*{t.strength!r}" for t in resolved.terms]
        payload = "+".join(parts) + f"@{resolved.positions}"
        if resolved.when is not None:
            payload += f"?{resolved.when}"
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def public_name(name: str) -> str:
    """A model's recorded name as clients may see it: a hub id as is, a local path by its last part."""
    if name.startswith(("/", ".", "~")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return PureWindowsPath(name).name if "\\" in name else Path(name).name
    return name


def public_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A vector's metadata with no path of the server's disk in it (the model's folder, if local)."""
    shown = dict(metadata)
    if isinstance(shown.get("model_name"), str):
        shown["model_name"] = public_name(shown["model_name"])
    return shown


def default_strength(vector: InContextVector) -> float:
    """The strength :func:`icv.steer` uses for ``vector`` when none is given (its own mode and site)."""
    from ..steer import default_strength_for

    return default_strength_for(vector)
