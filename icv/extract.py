"""Extraction: demonstrations in, one in-context vector out.

For every pair the activation at the last token of the source and of the target
is read at every layer (batched, hooks only); the shift ``target - source`` is
aggregated over pairs (PCA + mean as in the paper, or the mean), split back into
layers and normalised per layer.  ``preset="paper"`` reads the demonstrations
exactly as the authors' reference code does (:mod:`icv.presets`).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from . import metadata as meta, presets
from .aggregate import aggregator, unit_rows
from .capture import LastTokenRecorder, accepts_position_ids, pad_batch, tokenize
from .demos import as_demos, check_template, clean_demos, demos_sha256, format_text
from .errors import ArchitectureError, OptionError
from .layers import SITES, Architecture, decoder_layers, input_embeddings, site_modules
from .models import model_name_of
from .options import checked_options
from .vector import InContextVector


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the device of the input embeddings (first device under device_map)."""
    for module in (input_embeddings(model), model):
        if module is None:
            continue
        for parameter in module.parameters():
            if parameter.device.type != "meta":
                return parameter.device
    return torch.device("cpu")


def max_context(model: nn.Module, tokenizer: Any) -> int:
    config = model.config
    for attribute in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 1 << 20


def pad_token_id(tokenizer: Any) -> int:
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int):
            return value
    return 0


EMBEDDING_ROWS = ("block_input", "embedding_output")
T = TypeVar("T")
Steps = Generator[None, None, T]  # one batch per `next`; the return value is the result


def run_to_end(steps: Steps[T]) -> T:
    """Run work written in steps (:func:`extract_steps`) to its end, in one go."""
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            return finished.value


def batches_of(
    lengths: Sequence[int], order: Sequence[int], batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    """``order`` (longest first) cut into batches of ``batch_size`` texts at most, and when
    ``max_batch_tokens`` is given, of at most that many padded tokens (one text at least)."""
    cut: list[list[int]] = []
    for index in order:
        if cut and len(cut[-1]) < batch_size:
            widest = lengths[cut[-1][0]]  # longest first: the batch's first text sets its width
            if max_batch_tokens is None or widest * (len(cut[-1]) + 1) <= max_batch_tokens:
                cut[-1].append(index)
                continue
        cut.append([index])
    return cut


def read_last_token_states(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    site: str = "block",
    batch_size: int = 16,
    padding_side: str = "right",
    progress: bool | None = None,
    architecture: Architecture | None = None,
    embedding_row: str = "block_input",
    max_batch_tokens: int | None = None,
) -> torch.Tensor:
    """``(len(texts), slots, hidden)`` float32 last-token activations (see :func:`last_token_state_steps`)."""
    return run_to_end(
        last_token_state_steps(
            model,
            tokenizer,
            texts,
            site=site,
            batch_size=batch_size,
            padding_side=padding_side,
            progress=progress,
            architecture=architecture,
            embedding_row=embedding_row,
            max_batch_tokens=max_batch_tokens,
        )
    )


def last_token_state_steps(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    site: str = "block",
    batch_size: int = 16,
    padding_side: str = "right",
    progress: bool | None = None,
    architecture: Architecture | None = None,
    embedding_row: str = "block_input",
    max_batch_tokens: int | None = None,
) -> Steps[torch.Tensor]:
    """``(len(texts), slots, hidden)`` float32 last-token activations, one batch per step.

    For ``site="block"`` slot 0 is the embedding output and slot ``l + 1`` the output of
    decoder block ``l``; for the other sites slot ``l`` is that module's output in layer ``l``.
    ``embedding_row``: slot 0 is the first block's input (``"block_input"``) or the token
    embedding module's output (``"embedding_output"``, as the reference code reads it).
    Texts are batched longest first, so padding stays small; ``max_batch_tokens`` also
    bounds a batch's padded size (rows x longest), so every step costs at most about that
    many tokens' forward pass.  Between steps no hook of this reading is on the model.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_batch_tokens is not None and (
        not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool) or max_batch_tokens < 1
    ):
        raise OptionError(f"max_batch_tokens must be a positive integer or None, got {max_batch_tokens!r}")
    if site not in SITES:
        raise OptionError(f"unknown site '{site}': choose one of {', '.join(SITES)}")
    modules = site_modules(model, site, architecture)
    stop_after = decoder_layers(model, architecture)[-1] if site == "block" else modules[-1]
    if embedding_row not in EMBEDDING_ROWS:
        raise OptionError(f"embedding_row must be one of {', '.join(EMBEDDING_ROWS)}, got {embedding_row!r}")
    embedding_module = input_embeddings(model) if embedding_row == "embedding_output" else None
    if embedding_row == "embedding_output" and embedding_module is None:
        raise ArchitectureError("embedding_row='embedding_output' needs the model's get_input_embeddings()")
    recorder = LastTokenRecorder(
        modules, stop_after=stop_after, embeddings=site == "block", embedding_module=embedding_module
    )
    sequences = tokenize(tokenizer, texts, max_context(model, tokenizer))
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    use_positions = padding_side == "left" and accepts_position_ids(model)
    chunks = batches_of([len(s) for s in sequences], order, batch_size, max_batch_tokens)
    show = progress if progress is not None else len(chunks) > 4
    results: list[torch.Tensor | None] = [None] * len(sequences)
    for chunk in tqdm(chunks, desc="icv: reading demonstrations", disable=not show, unit="batch"):
        batch = pad_batch([sequences[i] for i in chunk], pad_id, padding_side, device)
        if not use_positions:
            batch.position_ids = None
        with recorder.attached():  # on for this batch only: the model is free between steps
            states = recorder.run(model, batch)
        for row, index in enumerate(chunk):
            results[index] = states[row]
        yield
    return torch.stack(results)  # type: ignore[arg-type]


@checked_options
def extract(
    model: nn.Module,
    tokenizer: Any,
    demos: Iterable[object],
    *,
    method: str | None = None,
    site: str | None = None,
    template: str | None = None,
    preset: str | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    name: str = "icv",
    injection_mode: str = "rotate",
    injection_site: str | None = None,
    recommended_strength: float | None = None,
    progress: bool | None = None,
    architecture: Architecture | None = None,
    max_batch_tokens: int | None = None,
) -> InContextVector:
    """Read the in-context vector of ``demos`` (``(source, target)`` pairs) from ``model``.

    With one demonstration PCA is undefined: the mean is used, with a warning, and
    ``method`` is recorded as ``"mean"``.

    Args:
        model: the transformers causal LM to read (the one the vector will steer).
        tokenizer: its tokenizer.
        demos: the demonstrations: :class:`icv.Demo` objects, ``(source, target)`` pairs or
            ``{"source": ..., "target": ...}`` mappings (see :func:`icv.read_demos` for files).
        method: ``"pca"`` (default: the first principal component of the shifts, sign
            aligned with their mean, plus the mean) or ``"mean"``.
        site: where the shift is read: ``"block"`` (the residual stream, default),
            ``"mlp"`` or ``"attn"``.
        template: how each text is presented, with ``{text}`` where it goes; default
            ``"{text}"`` (raw, as the paper); see :func:`icv.chat_reply_template`.
        preset: ``"paper"``: everything as the authors' reference code does it
            (punctuation and special characters deleted from the texts, the ``svd_flip``
            sign rule; see :mod:`icv.presets`), recorded in the vector's metadata; it fixes
            ``method``, ``site`` and ``template``.
        batch_size: texts per forward pass.
        padding_side: how a batch's texts are padded: ``"right"`` (default) or ``"left"``
            (with position ids, where the model takes them); each text's own last token is
            read either way.
        name: the vector's name (its metadata; shown by ``repr`` and the CLI).
        injection_mode: how :func:`icv.steer` applies the vector by default: ``"rotate"``
            (the paper) or ``"add"``.
        injection_site: where it applies by default; ``None``: ``"mlp"`` for the rotation
            (the reference code), ``"block"`` for the addition.
        recommended_strength: a strength to record as the vector's recommendation
            (:func:`icv.calibrate` finds one).
        progress: show a progress bar; ``None``: when there are more than 4 batches.
        architecture: where the decoder layers, MLPs and attentions are, for a model type
            the library does not know (see :func:`icv.register_architecture`).
        max_batch_tokens: also cut batches at that many padded tokens (rows x longest
            text), bounding each forward pass (``icv serve`` extracts with its chunk budget).

    Returns:
        The vector, with its metadata (model, method, demonstrations' count and
        fingerprint, injection mode and site).

    Raises:
        DemoError: no demonstrations, or one that is not a pair of non-empty texts.
        OptionError: an unknown method, site, preset or mode, or a bad template or batch size.
        ArchitectureError: a model type whose layers the library cannot find.
    """
    # The options are spelled out again (not forwarded by a wrapper) so that the API
    # reference, help() and editors show extract's own signature.
    return run_to_end(
        extract_steps(
            model,
            tokenizer,
            demos,
            method=method,
            site=site,
            template=template,
            preset=preset,
            batch_size=batch_size,
            padding_side=padding_side,
            name=name,
            injection_mode=injection_mode,
            injection_site=injection_site,
            recommended_strength=recommended_strength,
            progress=progress,
            architecture=architecture,
            max_batch_tokens=max_batch_tokens,
        )
    )


def extract_steps(
    model: nn.Module,
    tokenizer: Any,
    demos: Iterable[object],
    *,
    method: str | None = None,
    site: str | None = None,
    template: str | None = None,
    preset: str | None = None,
    batch_size: int = 16,
    padding_side: str = "right",
    name: str = "icv",
    injection_mode: str = "rotate",
    injection_site: str | None = None,
    recommended_strength: float | None = None,
    progress: bool | None = None,
    architecture: Architecture | None = None,
    max_batch_tokens: int | None = None,
) -> Steps[InContextVector]:
    """:func:`extract`, one batch of demonstration texts per step (a generator; see :func:`run_to_end`).

    For a caller that must do other work on the model between batches (a server
    decoding between them).  ``max_batch_tokens`` bounds a batch's padded size (see
    :func:`last_token_state_steps`); ``extract(..., max_batch_tokens=N)`` gives the same vector.
    """
    settings = presets.resolve(preset, method=method, site=site, template=template)
    given = as_demos(demos)
    pairs = clean_demos(given, settings.text_cleaning)
    method = settings.method
    if method == "pca" and len(pairs) < 2:
        warnings.warn("one demonstration: PCA is undefined, using the mean shift", stacklevel=5)
        method = "mean"
    aggregate = aggregator(method, pca_sign=settings.pca_sign)
    template = check_template(settings.template)
    site = settings.site
    if injection_mode not in meta.MODES:
        raise OptionError(f"unknown injection_mode '{injection_mode}': choose one of {', '.join(meta.MODES)}")
    injection_site = injection_site or ("mlp" if injection_mode == "rotate" else "block")
    if injection_site not in SITES:
        raise OptionError(f"unknown injection_site '{injection_site}': choose one of {', '.join(SITES)}")
    texts = [format_text(template, d.source) for d in pairs] + [
        format_text(template, d.target) for d in pairs
    ]
    states = yield from last_token_state_steps(
        model,
        tokenizer,
        texts,
        site=site,
        batch_size=batch_size,
        padding_side=padding_side,
        progress=progress,
        architecture=architecture,
        embedding_row=settings.embedding_row,
        max_batch_tokens=max_batch_tokens,
    )
    sources, targets = states[: len(pairs)], states[len(pairs) :]
    shifts = (targets - sources).flatten(start_dim=1)
    combined = aggregate(shifts).view(states.shape[1], states.shape[2])
    per_layer = combined[1:] if site == "block" else combined
    layer_states = states[:, 1:] if site == "block" else states
    # The activation's typical size per layer, so that additive steering's strength
    # is a fraction of it, like the rotation's.
    scales = layer_states.norm(dim=-1).mean(dim=0)
    metadata = {
        "name": name,
        "model_name": model_name_of(model),
        "model_type": str(getattr(model.config, "model_type", "")),
        "method": method,
        "extraction_site": site,
        "injection_mode": injection_mode,
        "injection_site": injection_site,
        "num_demos": len(pairs),
        "demos_sha256": demos_sha256(given, template),
        "prompt_template": template,
        "recommended_strength": recommended_strength,
        "preset": settings.preset,
        "text_cleaning": settings.text_cleaning,
        "pca_sign": settings.pca_sign if method == "pca" else "",
    }
    return InContextVector(unit_rows(per_layer), metadata, scales, shifts=per_layer)
