"""Vectors on the Hugging Face Hub: a folder with the vector file and a model card.

A vector's folder, on disk or as a model repository on the Hub, holds ``vector.safetensors`` (the
ordinary vector file) and ``README.md``, a model card with the Hub's YAML front matter.
:func:`save_pretrained` writes such a folder; :func:`resolve` finds the vector file of a folder,
or of a Hub id through ``huggingface_hub``'s cache (revisions, ``HF_HUB_OFFLINE``, the cache
folder as the Hub's libraries use them); :func:`push_to_hub` uploads a folder.

This module works on what a vector file holds (its tensors and metadata) and never imports
:mod:`icv.vector`: :class:`icv.InContextVector`'s methods call it, so the file I/O goes one way.
``huggingface_hub`` is imported when a function needs it, so ``import icv`` stays quick.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import __version__
from .distribution import DISTRIBUTION
from .errors import OptionError, VectorExistsError, VectorFileError
from .storage import save_vector, write_file
from .strength import default_strength

if TYPE_CHECKING:
    from .vector import InContextVector

VECTOR_FILE = "vector.safetensors"
# A condition's folder (icv.Condition.save_pretrained) holds this instead of VECTOR_FILE.
CONDITION_FILE = "condition.safetensors"
CARD_FILE = "README.md"
# What a folder or Hub repository holds: kind -> (its file, what to call it).
KINDS = {"vector": (VECTOR_FILE, "a steering vector"), "condition": (CONDITION_FILE, "a condition")}
TAGS = ("in-context-vectors", "steering-vector", "activation-steering", "icv")
DEFAULT_LICENSE = "apache-2.0"
# owner/name, as the Hub spells repository ids (letters, digits, '-', '_', '.'; no '--' or '..').
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
MAX_EVALUATION_CHARS = 100_000


class Markdown(Protocol):
    """A report that renders itself as Markdown (:class:`icv.evaluate.Evaluation`, a calibration report)."""

    def markdown(self) -> str:
        """The report as Markdown."""
        ...


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hub repository id (``owner/name``) rather than a file of this machine.

    An existing path always wins: ``resolve`` checks the disk first.

    Args:
        text: what the user wrote where a vector is expected.

    Returns:
        True for ``owner/name`` without a vector file's suffix, ``..`` or ``--``.
    """
    return (
        bool(HUB_ID.match(text))
        and ".." not in text
        and "--" not in text
        and not text.endswith((".safetensors", ".gguf"))
    )


def model_card(
    metadata: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    description: str | None = None,
    evaluation: str | Markdown | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The model card (``README.md``) of a vector's folder: the Hub's front matter, then what it is and how to use it.

    Args:
        metadata: the vector's metadata (:attr:`icv.InContextVector.metadata`).
        repo_id: the Hub id or folder the card tells readers to load from (default: ``owner/name``
            spelled out as such).
        description: what the vector does, in the author's words (a sentence or a paragraph).
        evaluation: an evaluation of the vector: Markdown, or a report with a ``markdown()``
            method (what :func:`icv.evaluate` and :func:`icv.calibrate` return).
        license: the license of the vector, as the Hub spells it (``apache-2.0``, ``mit`` ...).

    Returns:
        The card's text.

    Raises:
        OptionError: ``license``, ``description`` or ``evaluation`` is not text of a sane size.
    """
    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", license):
        raise OptionError(f"license must be a Hub license id such as 'apache-2.0', got {license!r:.60}")
    name = str(metadata.get("name") or "in-context vector")
    model = str(metadata.get("model_name") or "")
    front = {"library_name": DISTRIBUTION, "tags": list(TAGS), "license": license}
    if is_hub_id(model):
        front["base_model"] = model
    where = repo_id or "owner/name"
    parts = [
        _front_matter(front),
        f"# {name}\n",
        _what_it_does(metadata, _text(description, "description")),
        _facts(metadata),
        _strength(metadata),
        _usage(model, where),
        "## Evaluation\n\n" + (_evaluation(evaluation) or "None was recorded with this vector.") + "\n",
    ]
    return "\n".join(parts)


def prepare_folder(folder: str | os.PathLike[str], file: str, overwrite: bool, how: str) -> tuple[Path, Path]:
    """``(folder/file, folder/README.md)``, the folder made; existing files refused unless ``overwrite``.

    Args:
        folder: the folder to write into (made if missing).
        file: the icv file's name in it.
        overwrite: replace files that exist.
        how: how the caller replaces them, for the refusal's message.

    Raises:
        VectorFileError: the folder cannot be made.
        VectorExistsError: a file exists and ``overwrite`` is false.
    """
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:
        raise VectorFileError(f"cannot make the folder {str(target)[:200]!r}: {error}") from None
    paths = target / file, target / CARD_FILE
    if not overwrite:
        for path in paths:
            if path.exists():
                raise VectorExistsError(f"'{path}' exists; pass {how} to replace it")
    return paths


def save_pretrained(
    vector: InContextVector,
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    description: str | None = None,
    evaluation: str | Markdown | None = None,
    license: str = DEFAULT_LICENSE,
    overwrite: bool = False,
) -> Path:
    """Write ``vector``'s folder: ``vector.safetensors`` and its model card ``README.md``.

    Args:
        vector: the vector to write.
        folder: the folder (made if missing, with its parents).
        repo_id: the Hub id the card tells readers to load from.
        description: what the vector does, for the card.
        evaluation: the vector's evaluation for the card (Markdown or a report).
        license: the vector's license on the Hub.
        overwrite: replace the files of an earlier save (otherwise :class:`icv.VectorExistsError`).

    Returns:
        The folder.

    Raises:
        VectorExistsError: the folder holds a vector or card and ``overwrite`` is false.
        VectorFileError: the folder cannot be made or written.
        OptionError: a bad ``license``, ``description`` or ``evaluation``.
    """
    card = model_card(
        vector.metadata, repo_id=repo_id, description=description, evaluation=evaluation, license=license
    )
    vector_path, card_path = prepare_folder(folder, VECTOR_FILE, overwrite, "overwrite=True (or --force)")
    existed = vector_path.exists()
    save_vector(vector, vector_path, overwrite=overwrite)
    try:
        write_file(card.encode("utf-8"), card_path, overwrite=overwrite, what="a model card")
    except BaseException:
        if not existed:  # leave nothing half-done: a vector without its card goes
            vector_path.unlink(missing_ok=True)
        raise
    return card_path.parent


def resolve(
    name_or_folder: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    kind: str = "vector",
) -> Path:
    """The vector file of a folder, a vector file itself, or a Hub id's file in the Hub's cache.

    A Hub id is fetched with ``huggingface_hub.hf_hub_download``: it honours ``HF_HUB_OFFLINE``,
    ``HF_HUB_CACHE`` / ``HF_HOME``, and reads a cached revision without the network when offline.

    Args:
        name_or_folder: a folder written by :func:`save_pretrained`, a vector file, or a Hub id
            (``owner/name``).
        revision: a branch, tag or commit of the Hub repository (default: ``main``).
        cache_dir: the Hub cache to use instead of the default.
        token: a Hub token (default: the logged-in one, if any).
        local_files_only: never use the network; the cache must hold the file.
        force_download: fetch again even if the cache holds the file.
        kind: ``"vector"`` (``vector.safetensors``) or ``"condition"`` (``condition.safetensors``,
            what :meth:`icv.Condition.save_pretrained` writes); a folder of the other kind is
            refused with a message that names it.  ``"any"``: whichever of the two the folder or
            Hub repository holds (a vector's first), for what takes both (``icv serve``,
            ``icv push``, ``icv pull``); the caller tells them apart by the file's name.

    Returns:
        The path of the vector (or condition) file.

    Raises:
        VectorFileError: a folder without a vector file, a name that is neither a path nor a Hub
            id, or a Hub id that cannot be fetched (no such repository, revision or file;
            offline with nothing cached; the network failing).
    """
    if kind == "any":
        return _resolve_either(name_or_folder, revision, cache_dir, token, local_files_only, force_download)
    if kind not in KINDS:
        raise OptionError(f"kind must be one of {', '.join(KINDS)} or 'any', got {kind!r:.40}")
    filename, what = KINDS[kind]
    path = Path(name_or_folder)
    if path.is_dir():
        if revision is not None:
            raise OptionError(f"revision={revision!r} applies to Hub ids, not to the folder '{path}'")
        if not (path / filename).is_file():
            other = next((w for k, (f, w) in KINDS.items() if k != kind and (path / f).is_file()), None)
            if other is not None:
                raise VectorFileError(f"'{path}' holds {other}, not {what}: {_kind_hint(kind)}")
            raise VectorFileError(f"'{path}' has no {filename}: is it a folder that save_pretrained wrote?")
        return path / filename
    if path.exists():  # a file, or a pipe or device the loader refuses with its own words
        return path
    text = os.fspath(name_or_folder)
    if not is_hub_id(text):
        raise VectorFileError(f"no file or folder '{text[:200]}', and it is not a Hub id (owner/name)")
    return _download(text, revision, cache_dir, token, local_files_only, force_download, filename)


def _resolve_either(
    name_or_folder: str | os.PathLike[str],
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
    force_download: bool,
) -> Path:
    """:func:`resolve` with ``kind="any"``: a vector's file, else a condition's; the vector's error if neither."""
    path = Path(name_or_folder)
    if path.is_dir() and not (path / VECTOR_FILE).is_file() and (path / CONDITION_FILE).is_file():
        kind = "condition"
    elif path.exists() or not is_hub_id(os.fspath(name_or_folder)):
        kind = "vector"  # a file is itself; a folder without either file is refused as a vector's
    else:  # a Hub id: which file its repository holds is known only by asking for it
        kind = ""
    fetch = partial(
        resolve,
        name_or_folder,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    if kind:
        return fetch(kind=kind)
    try:
        return fetch(kind="vector")
    except VectorFileError as error:
        try:
            return fetch(kind="condition")
        except VectorFileError:
            raise error from None


def _kind_hint(wanted: str) -> str:
    if wanted == "vector":
        return "load it with icv.Condition.from_pretrained and pass it as when= (--when)"
    return "load it with icv.InContextVector.from_pretrained and steer with it"


def push_to_hub(
    vector: InContextVector,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    description: str | None = None,
    evaluation: str | Markdown | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """Upload ``vector`` with its model card to the Hub model repository ``repo_id`` (made if missing).

    Args:
        vector: the vector to upload.
        repo_id: ``owner/name``.
        private: make a new repository private (an existing one keeps its visibility).
        token: a Hub token with write access (default: the logged-in one).
        revision: the branch to commit to (default: the default branch).
        commit_message: the commit's message (default: ``Upload in-context vector NAME``).
        create_pr: open a pull request instead of committing to the branch.
        description: what the vector does, for the card.
        evaluation: the vector's evaluation for the card (Markdown or a report).
        license: the vector's license on the Hub.

    Returns:
        The URL of the commit (or of the pull request).

    Raises:
        OptionError: ``repo_id`` is not ``owner/name``, or a bad card field.
        VectorFileError: the Hub refused or could not be reached (the message says which).
    """
    message = commit_message or f"Upload in-context vector {vector.metadata.get('name') or ''}".strip()
    return upload_folder(
        repo_id,
        lambda staging: save_pretrained(
            vector, staging, repo_id=repo_id, description=description, evaluation=evaluation, license=license
        ),
        private=private,
        token=token,
        revision=revision,
        commit_message=message,
        create_pr=create_pr,
    )


def upload_folder(
    repo_id: str,
    write: Callable[[str], Any],
    *,
    private: bool | None,
    token: str | None,
    revision: str | None,
    commit_message: str,
    create_pr: bool,
) -> str:
    """Write a folder with ``write(staging_dir)`` and upload it as one commit to the model repository ``repo_id``.

    Every kind of icv file (vector, condition) pushes through here, so the Hub's failures read the
    same for all of them.

    Args:
        repo_id: ``owner/name`` (made if missing).
        write: writes the folder's files into the staging directory it is given.
        private: make a new repository private.
        token: a Hub token with write access (default: the logged-in one).
        revision: the branch to commit to (default: the default branch).
        commit_message: the commit's message.
        create_pr: open a pull request instead of committing to the branch.

    Returns:
        The URL of the commit (or of the pull request).

    Raises:
        OptionError: ``repo_id`` is not ``owner/name``.
        VectorFileError: the Hub refused or could not be reached (the message says which).
    """
    if not isinstance(repo_id, str) or not is_hub_id(repo_id):
        raise OptionError(f"repo_id must be a Hub id 'owner/name', got {repo_id!r:.100}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name=DISTRIBUTION, library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="icv-push-") as staging:
        write(staging)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                repo_type="model",
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
            )
        except (HfHubHTTPError, OSError) as error:
            raise VectorFileError(
                f"cannot push to the Hub repository '{repo_id}': {_first_line(error)}"
            ) from None
    return str(getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or commit)


# -- the card's parts -------------------------------------------------------------------


def _front_matter(fields: Mapping[str, Any]) -> str:
    # JSON strings and lists are valid YAML, so every value is quoted safely whatever it holds.
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines += [f"{key}:", *(f"- {json.dumps(item)}" for item in value)]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join([*lines, "---", ""])


def _what_it_does(metadata: Mapping[str, Any], description: str | None) -> str:
    model = metadata.get("model_name") or f"a {metadata.get('model_type', '')} model"
    said = f"{description}\n\n" if description else ""
    return (
        f"{said}An in-context vector (Liu et al., ICML 2024) for `{model}`, made with "
        f"[icv](https://pypi.org/project/{DISTRIBUTION}/): the shift that "
        f"{_count(metadata.get('num_demos'))} demonstration pairs (source -> target) cause in the "
        "model's latent states, read once. Steering with it moves the model's output the way the "
        "targets differ from the sources, without putting the demonstrations in the prompt.\n"
    )


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and value > 0 else "its"


def _facts(metadata: Mapping[str, Any]) -> str:
    layers = metadata.get("layers")
    rows = [
        ("model", metadata.get("model_name") or "(any of its type and shape)"),
        (
            "model type, layers, hidden size",
            f"{metadata.get('model_type')}, {metadata.get('num_layers')}, {metadata.get('hidden_size')}",
        ),
        ("demonstrations", metadata.get("num_demos")),
        ("demonstrations' fingerprint (sha256)", metadata.get("demos_sha256") or "(unknown)"),
        ("prompt template", metadata.get("prompt_template") or "(raw text)"),
        (
            "extraction",
            f"{metadata.get('method')} at the {metadata.get('extraction_site')} output"
            + (f", preset {metadata['preset']}" if metadata.get("preset") else ""),
        ),
        ("injection", f"{metadata.get('injection_mode')}@{metadata.get('injection_site')}"),
        ("layers steered", "all" if layers is None else ", ".join(str(layer) for layer in layers)),
        *_training_row(metadata.get("training")),
        (
            "file format, library",
            f"{metadata.get('icv_format_version', '')} ({VECTOR_FILE}), icv {metadata.get('library_version')}",
        ),
    ]
    table = "\n".join(f"| {key} | {_cell(value)} |" for key, value in rows)
    return f"## The vector\n\n| | |\n|---|---|\n{table}\n"


def _training_row(training: Any) -> list[tuple[str, str]]:
    """What ``icv.train`` did, for a trained vector's card."""
    if not isinstance(training, Mapping):
        return []
    before, after = training.get("held_out_loss_before"), training.get("held_out_loss_after")
    held = (
        f", held-out loss {before:.4g} -> {after:.4g}"
        if isinstance(after, float) and isinstance(before, float)
        else ""
    )
    return [
        (
            "training",
            f"{training.get('level')} by {training.get('objective')}, {training.get('steps')} steps on "
            f"{training.get('pairs')} pairs at strength {training.get('strength')}{held}",
        )
    ]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _strength(metadata: Mapping[str, Any]) -> str:
    recommended = metadata.get("recommended_strength")
    if recommended is not None:
        return (
            f"## Strength\n\nRecommended strength: **{recommended:g}** (stored in the file: "
            "`icv.steer(model, vec)` and `icv generate` use it when no strength is given).\n"
        )
    mode, depth = str(metadata.get("injection_mode") or "rotate"), metadata.get("num_layers")
    guess = ""
    if mode in ("rotate", "add") and isinstance(depth, int) and depth > 0:
        guess = f" ({default_strength(mode, depth):.3g} for this model)"
    return (
        "## Strength\n\nNo recommended strength is stored: `icv.steer` uses the default for the "
        f"model's depth{guess} and says so. `icv.calibrate` finds one on your inputs.\n"
    )


def _usage(model: str, where: str) -> str:
    load = f'icv.load_model("{model}")' if model else "icv.load_model(...)  # a model of this type and shape"
    return f"""## Use

```sh
pip install {DISTRIBUTION}
```

```python
import icv

model, tok = {load}
vec = icv.InContextVector.from_pretrained("{where}")
inputs = tok("The hotel room was", return_tensors="pt")
with icv.steer(model, vec):  # strength=...: stronger or weaker; -vec steers the other way
    out = model.generate(**inputs, max_new_tokens=40)
print(tok.decode(out[0], skip_special_tokens=True))
```

From the shell: `icv generate --vector {where} --compare "The hotel room was"`, or serve it with
`icv serve --vectors {where}` (an OpenAI-compatible server, steered per request).
"""


def _text(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_EVALUATION_CHARS:
        raise OptionError(f"{what} must be text of at most {MAX_EVALUATION_CHARS} characters")
    return value.strip() or None


def _evaluation(evaluation: str | Markdown | None) -> str | None:
    if evaluation is None or isinstance(evaluation, str):
        return _text(evaluation, "evaluation")
    render = getattr(evaluation, "markdown", None)
    if not callable(render):
        raise OptionError(
            f"evaluation must be Markdown or a report with a markdown() method, got {type(evaluation).__name__}"
        )
    return _text(render(), "evaluation")


# -- the Hub ----------------------------------------------------------------------------


def _download(
    repo_id: str,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
    local_files_only: bool,
    force_download: bool,
    filename: str = VECTOR_FILE,
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=None if cache_dir is None else Path(cache_dir),
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
                library_name=DISTRIBUTION,
                library_version=__version__,
            )
        )
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is one
        where = f" at revision {revision!r}" if revision else ""
        raise VectorFileError(
            f"'{repo_id}'{where} is not in the Hub cache and the Hub cannot be reached "
            "(offline: HF_HUB_OFFLINE or local_files_only, or no network)"
        ) from None
    except RepositoryNotFoundError:
        raise VectorFileError(
            f"no Hub repository '{repo_id}' (or it is private or gated: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise VectorFileError(f"the Hub repository '{repo_id}' has no revision {revision!r}") from None
    except EntryNotFoundError:
        what = "an icv vector" if filename == VECTOR_FILE else "an icv condition"
        raise VectorFileError(
            f"the Hub repository '{repo_id}' has no {filename}: is it {what}? (a vector's repository "
            f"holds {VECTOR_FILE}, a condition's {CONDITION_FILE})"
        ) from None
    except HFValidationError as error:
        raise VectorFileError(f"'{repo_id}' is not a valid Hub id: {_first_line(error)}") from None
    except (HfHubHTTPError, OSError) as error:
        raise VectorFileError(f"cannot fetch '{repo_id}' from the Hub: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
