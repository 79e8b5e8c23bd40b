"""An independent float64 port of the reference code's in-context vector, for the tests to compare against.

Written from the method's description (docs/steering.md, the issue that asked for
``preset="paper"``), not from icv's code: plain hooks found by attribute paths, one
text at a time with no padding, the arithmetic in float64.

* Each demonstration text loses every character of ``~!@#$%^&*()_+`-={}[]|\\:;"'<>,.?/``
  and its surrounding whitespace, and is tokenized as the tokenizer does by default.
* For each text, the last token's activation is read at the token-embedding module's
  output and at every decoder block's output: ``(L + 1, d)``.
* The shift per pair is ``flatten(H(target)) - flatten(H(source))``; the vector is the first
  principal component of the centred shifts (from an SVD, its sign fixed so that the
  demonstration with the largest absolute left-singular value is positive) plus the mean,
  reshaped to ``(L + 1, d)``, embedding row dropped.
* Injection: at every MLP output, every position,
  ``x' = normalize(normalize(x) + lam * (1 + max(0, cos(x, -icv_l))) * normalize(icv_l)) * |x|``;
  several vectors: the pushes ``lam_i * boost_i * normalize(icv_i)`` are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from steering_reference import site_module
from torch import nn

SPECIAL = set("~!@#$%^&*()_+`-={}[]|\\:;\"'<>,.?/")


def clean(text: str) -> str:
    return "".join(c for c in text if c not in SPECIAL).strip()


def _num_layers(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.n_layer


def last_token_states(model: nn.Module, tokenizer, text: str) -> torch.Tensor:
    """``(L + 1, d)`` float64: embedding output, then every block's output, at the last token."""
    captured: dict[int, torch.Tensor] = {}

    def keep(slot: int):
        def hook(_m, _args, output):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            captured[slot] = hidden[0, -1].double()

        return hook

    handles = [model.get_input_embeddings().register_forward_hook(keep(0))]
    for layer in range(_num_layers(model)):
        handles.append(site_module(model, layer, "block").register_forward_hook(keep(layer + 1)))
    try:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([captured[slot] for slot in range(len(captured))])


def paper_vector(model: nn.Module, tokenizer, demos: Sequence[tuple[str, str]]) -> torch.Tensor:
    """``(L, d)`` float64: the reference code's in-context vector (embedding row dropped)."""
    shifts = []
    for source, target in demos:
        before = last_token_states(model, tokenizer, clean(source))
        after = last_token_states(model, tokenizer, clean(target))
        shifts.append((after - before).reshape(-1))
    data = torch.stack(shifts)
    mean = data.mean(dim=0)
    u, _s, vh = torch.linalg.svd(data - mean, full_matrices=False)
    top = int(u[:, 0].abs().argmax())
    component = vh[0] * torch.sign(u[top, 0])
    rows = (component + mean).reshape(-1, model.get_input_embeddings().embedding_dim)
    return rows[1:]


def paper_rotation(x: torch.Tensor, vectors: Sequence[torch.Tensor], lams: Sequence[float]) -> torch.Tensor:
    """The reference injection at one layer, in float64, for one or several vectors."""
    x64 = x.double()
    norm = x64.norm(dim=-1, keepdim=True)
    push = torch.zeros_like(x64)
    for icv, lam in zip(vectors, lams, strict=True):
        icv = icv.double()
        cos = torch.nn.functional.cosine_similarity(x64, -icv.expand_as(x64), dim=-1)
        boost = 1.0 + cos.clamp_min(0.0)
        push = push + lam * boost.unsqueeze(-1) * (icv / icv.norm())
    push = push / len(vectors)
    turned = x64 / norm + push
    return (turned / turned.norm(dim=-1, keepdim=True) * norm).to(x.dtype)


@contextmanager
def paper_steering(model: nn.Module, vectors: Sequence[torch.Tensor], lams: Sequence[float]):
    """Plain hooks at every MLP output applying :func:`paper_rotation` with each vector's layer row."""

    def make(layer: int):
        def hook(_m, _args, output):
            x = output if isinstance(output, torch.Tensor) else output[0]
            y = paper_rotation(x, [v[layer] for v in vectors], lams)
            return y if isinstance(output, torch.Tensor) else (y, *output[1:])

        return hook

    handles = [
        site_module(model, layer, "mlp").register_forward_hook(make(layer))
        for layer in range(_num_layers(model))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
