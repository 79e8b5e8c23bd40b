"""Which steering each token of one vLLM forward step gets: a slot index per token.

vLLM runs one flat ``(num_tokens, hidden)`` batch per step: request ``i`` owns the
tokens ``query_start_loc[i]:query_start_loc[i + 1]``, which continue its sequence
after the ``computed[i]`` tokens already in the KV cache.  A token is a prompt token
exactly when its position in the sequence is below the request's prompt length
(chunked prefill, prefix-cache hits and recomputation after preemption included),
which is how :func:`icv.steer` decides ``positions`` in ``model.generate`` too.

Each steered request has a slot (1, 2, ...) in the step's table of steerings; slot 0
is the zero delta.  A token gets its request's slot where its request's
``positions`` cover it, else 0, so one gather per layer gives every token its delta
and unsteered tokens come out bitwise unchanged.  Everything here runs on the CPU,
once per step, from numbers vLLM keeps on the CPU: no device synchronisation.
"""

from __future__ import annotations

import numpy as np

from ...positions import POSITIONS

# positions value -> the small integer the arrays below carry
POSITION_CODES = {name: code for code, name in enumerate(POSITIONS)}
_ALL, _PROMPT, _GENERATED = (POSITION_CODES[name] for name in ("all", "prompt", "generated"))


def token_slots(
    query_start_loc: np.ndarray,
    computed: np.ndarray,
    prompt_lengths: np.ndarray,
    slots: np.ndarray,
    positions: np.ndarray,
    num_tokens: int,
) -> np.ndarray:
    """``(num_tokens,)`` int64: the slot of each token's steering (0 where none applies).

    Per request ``i`` (in batch order): its token range ``query_start_loc[i:i + 2]``,
    ``computed[i]`` tokens before this step, ``prompt_lengths[i]``, its ``slots[i]``
    (0: unsteered) and ``positions[i]`` (a :data:`POSITION_CODES` value).  Tokens past
    the requests' last one (padding) get 0.
    """
    num_reqs = len(slots)
    starts = np.asarray(query_start_loc[: num_reqs + 1], dtype=np.int64)
    scheduled = int(starts[-1]) if num_reqs else 0
    if scheduled > num_tokens:
        raise ValueError(f"the step schedules {scheduled} tokens but the batch holds {num_tokens}")
    out = np.zeros(num_tokens, dtype=np.int64)
    if not scheduled:
        return out
    request = np.repeat(np.arange(num_reqs), np.diff(starts))
    position = np.asarray(computed[:num_reqs], dtype=np.int64)[request] + (
        np.arange(scheduled) - starts[request]
    )
    in_prompt = position < np.asarray(prompt_lengths, dtype=np.int64)[request]
    mode = np.asarray(positions)[request]
    keep = (mode == _ALL) | ((mode == _PROMPT) & in_prompt) | ((mode == _GENERATED) & ~in_prompt)
    out[:scheduled] = np.where(keep, np.asarray(slots, dtype=np.int64)[request], 0)
    return out
