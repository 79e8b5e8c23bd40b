"""Batched greedy generation, optionally steered: what recipes, evaluation and the CLI share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import OptionError
from .extract import model_device, pad_token_id
from .steer import steer
from .vector import InContextVector


def left_padded(tokenizer: Any, prompts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Token ids and attention mask for ``prompts``, padded on the left (what generate needs)."""
    sequences = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    width = max(len(s) for s in sequences)
    pad = pad_token_id(tokenizer)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def complete(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    vector: InContextVector | None = None,
    strength: float | Sequence[float] | None = None,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    progress: bool | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    stop_strings: Sequence[str] | None = None,
    streamer: Any = None,
    decisions: list[Any] | None = None,
    **steer_options: Any,
) -> list[str]:
    """Completions (new text only) for ``prompts``: greedy by default, batched with left padding.

    With ``vector`` the model is steered for the duration (``strength`` and
    ``steer_options`` go to :func:`icv.steer`); a per-row ``strength`` sequence has
    one value per prompt.  ``do_sample`` samples instead, with ``temperature`` and
    ``top_p`` when given.  ``stop_strings`` (e.g. ``['"']``) ends each row once it has
    produced one of them, which saves most of the decoding when answers are short.
    ``streamer`` (a transformers streamer) receives the tokens as they come (one prompt).
    With ``when=`` in ``steer_options`` (conditional steering), ``decisions`` (a list)
    receives each batch's :class:`icv.gate.Decision`.
    """
    if isinstance(prompts, str):
        raise OptionError("prompts must be a list of strings, not one string")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    per_row = isinstance(strength, Sequence) and not isinstance(strength, str)
    if per_row and len(strength) != len(prompts):  # type: ignore[arg-type]
        raise OptionError(f"{len(strength)} strengths for {len(prompts)} prompts")  # type: ignore[arg-type]
    device = model_device(model)
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    show = progress if progress is not None else len(starts) > 4
    for start in tqdm(starts, desc="icv: generating", disable=not show, unit="batch"):
        chunk = list(prompts[start : start + batch_size])
        inputs = left_padded(tokenizer, chunk, device)
        row_strength = strength[start : start + batch_size] if per_row else strength  # type: ignore[index]
        generate_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            pad_token_id=pad_token_id(tokenizer),
        )
        if do_sample:
            generate_kwargs.update(
                {k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None}
            )
        if stop_strings:
            generate_kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        if streamer is not None:
            generate_kwargs["streamer"] = streamer
        lm: Any = model  # a transformers model: nn.Module's type does not declare generate()
        if vector is None:
            tokens = lm.generate(**inputs, **generate_kwargs)
        else:
            with steer(model, vector, row_strength, **steer_options) as steering:
                tokens = lm.generate(**inputs, **generate_kwargs)
            if decisions is not None and steering.decision is not None:
                decisions.append(steering.decision)
        new = tokens[:, inputs["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs
