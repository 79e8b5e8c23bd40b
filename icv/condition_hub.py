"""Conditions on the Hugging Face Hub: a folder with ``condition.safetensors`` and a model card.

The same layout as a vector's folder (:mod:`icv.hub`), with the condition's own file name, so
that neither kind is mistaken for the other: :func:`icv.hub.resolve` refuses a condition's
folder (or Hub repository) where a vector is needed, and the other way round.  This module
never imports :mod:`icv.condition` at import time (the condition's methods call it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distribution import DISTRIBUTION
from .errors import OptionError
from .hub import (
    CONDITION_FILE,
    DEFAULT_LICENSE,
    _cell,
    _front_matter,
    _text,
    is_hub_id,
    prepare_folder,
    upload_folder,
)
from .storage import write_file

if TYPE_CHECKING:
    from .condition import Condition

TAGS = ("conditional-steering", "activation-steering", "icv")


def condition_card(
    metadata: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The model card (``README.md``) of a condition's folder: front matter, what it decides, how to use it.

    Args:
        metadata: the condition's metadata (:attr:`icv.Condition.metadata`).
        repo_id: the Hub id or folder the card tells readers to load from.
        description: what the condition matches, in the author's words.
        license: the license, as the Hub spells it.

    Returns:
        The card's text.

    Raises:
        OptionError: a bad ``license`` or ``description``.
    """
    import re

    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", license):
        raise OptionError(f"license must be a Hub license id such as 'apache-2.0', got {license!r:.60}")
    said = _text(description, "description")
    name = str(metadata.get("name") or "condition")
    model = str(metadata.get("model_name") or "")
    front: dict[str, Any] = {"library_name": DISTRIBUTION, "tags": list(TAGS), "license": license}
    if is_hub_id(model):
        front["base_model"] = model
    where = repo_id or "owner/name"
    confusion = metadata.get("confusion")
    f1 = metadata.get("f1")
    rows = [
        ("model", model or "(any of its type and shape)"),
        (
            "model type, layers, hidden size",
            f"{metadata.get('model_type')}, {metadata.get('num_layers')}, {metadata.get('hidden_size')}",
        ),
        (
            "decision",
            f"layer {metadata.get('layer')}, score {metadata.get('comparison')} {metadata.get('threshold'):.6g}",
        ),
        ("prompt read as", metadata.get("positions")),
        ("held-out F1 (grid search)", "(hand-made)" if f1 is None else f"{f1:.3f} {confusion or ''}"),
        ("texts (matching, other)", f"{metadata.get('num_matching')}, {metadata.get('num_other')}"),
        (
            "file format, library",
            f"{metadata.get('icv_format_version')} ({CONDITION_FILE}), icv {metadata.get('library_version')}",
        ),
    ]
    table = "\n".join(f"| {key} | {_cell(value)} |" for key, value in rows)
    load = f'icv.load_model("{model}")' if model else "icv.load_model(...)"
    return "\n".join(
        [
            _front_matter(front),
            f"# {name}\n",
            (f"{said}\n\n" if said else "")
            + "A condition for conditional steering (CAST, Lee et al., ICLR 2025) made with "
            f"[icv](https://pypi.org/project/{DISTRIBUTION}/): it decides per prompt whether a "
            "steering vector acts. Not a steering vector: pass it as `when=`.\n",
            f"## The condition\n\n| | |\n|---|---|\n{table}\n",
            f"""## Use

```python
import icv

model, tok = {load}
cond = icv.Condition.from_pretrained("{where}")
with icv.steer(model, vec, when=cond) as steering:  # vec: a steering vector
    out = model.generate(**tok(["..."], return_tensors="pt"), max_new_tokens=40)
print(steering.decision.fired)
```

From the shell: `icv generate --vector VEC --when {where} "..."`.
""",
        ]
    )


def save_pretrained(
    condition: Condition,
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
    overwrite: bool = False,
) -> Path:
    """Write ``condition``'s folder: ``condition.safetensors`` and its model card ``README.md``.

    Args:
        condition: the condition to write.
        folder: the folder (made if missing, with its parents).
        repo_id: the Hub id the card tells readers to load from.
        description: what the condition matches, for the card.
        license: the license on the Hub.
        overwrite: replace the files of an earlier save.

    Returns:
        The folder.

    Raises:
        VectorExistsError: the folder holds a condition or card and ``overwrite`` is false.
        VectorFileError: the folder cannot be made or written.
        OptionError: a bad ``license`` or ``description``.
    """
    card = condition_card(condition.metadata, repo_id=repo_id, description=description, license=license)
    file, card_path = prepare_folder(folder, CONDITION_FILE, overwrite, "overwrite=True")
    existed = file.exists()
    condition.save(file, overwrite=overwrite)
    try:
        write_file(card.encode("utf-8"), card_path, overwrite=overwrite, what="a model card")
    except BaseException:
        if not existed:  # nothing half-done: a condition without its card goes
            file.unlink(missing_ok=True)
        raise
    return card_path.parent


def push_to_hub(
    condition: Condition,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """Upload ``condition`` with its card to the Hub model repository ``repo_id`` (made if missing).

    Args:
        condition: the condition to upload.
        repo_id: ``owner/name``.
        private: make a new repository private.
        token: a Hub token with write access (default: the logged-in one).
        revision: the branch to commit to.
        commit_message: the commit's message (default: ``Upload icv condition NAME``).
        create_pr: open a pull request instead of committing to the branch.
        description: what the condition matches, for the card.
        license: the license on the Hub.

    Returns:
        The URL of the commit (or of the pull request).

    Raises:
        OptionError: ``repo_id`` is not ``owner/name``, or a bad card field.
        VectorFileError: the Hub refused or could not be reached.
    """
    message = commit_message or f"Upload icv condition {condition.name}"
    return upload_folder(
        repo_id,
        lambda staging: save_pretrained(
            condition, staging, repo_id=repo_id, description=description, license=license
        ),
        private=private,
        token=token,
        revision=revision,
        commit_message=message,
        create_pr=create_pr,
    )
