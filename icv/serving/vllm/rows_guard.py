"""One request's broken numbers end that request with an error, and no other.

vLLM, by default, samples whatever a row's logits hold: greedy decoding of an all-NaN
row picks token 0 (argmax takes NaN as the largest value), and so does its random
sampling (probabilities over exponential noise, then argmax), so a request whose
hidden states became NaN or infinite (a steering that overflows, say, in float16)
would return garbage with a 200.  vLLM can count each row's NaN logits
(``VLLM_COMPUTE_NANS_IN_LOGITS=1``, which the plugin's environment turns on; its
sibling ``VLLM_RAISE_ON_LOGIT_NANS`` stops the whole engine instead), but only
reports the counts in its statistics.

:func:`end_corrupted_requests` wraps the engine core's ``Scheduler.update_from_output``:
a request whose logits held a NaN in this step gets no token from it and finishes
with ``FinishReason.ERROR``, which vLLM's OpenAI server answers with its error shape
(a 500 ``Internal server error``, or an error event in a stream) and the offline
``LLM`` with ``finish_reason="error"``; every other request of the batch goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)
NANS_ENV = "VLLM_COMPUTE_NANS_IN_LOGITS"


def corrupted(num_nans_in_logits: Mapping[str, int] | None) -> set[str]:
    """The request ids whose logits held a NaN in this step."""
    return {req_id for req_id, count in (num_nans_in_logits or {}).items() if count > 0}


def end_corrupted_requests() -> None:
    """Wrap vLLM's scheduler so that corrupted requests end with an error (safe to call twice)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler.update_from_output
    if getattr(original, "_icv_guard", False):
        return

    @functools.wraps(original)
    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        bad = corrupted(getattr(model_runner_output, "num_nans_in_logits", None))
        outputs = original(self, scheduler_output, model_runner_output)
        if bad:
            end_with_error(self, outputs, bad)
        return outputs

    update_from_output._icv_guard = True  # type: ignore[attr-defined]
    Scheduler.update_from_output = update_from_output


def end_with_error(scheduler: Any, outputs: dict[int, Any], request_ids: Iterable[str]) -> list[str]:
    """Turn this step's outputs of ``request_ids`` into errors without a token; finish them.

    ``outputs`` is what ``update_from_output`` returns (client index -> ``EngineCoreOutputs``).
    Returns the ids that were ended.
    """
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
    from vllm.v1.request import RequestStatus

    wanted = set(request_ids)
    ended = []
    for req_id in sorted(wanted):
        request = scheduler.requests.get(req_id)
        if request is None:
            continue
        client = outputs.setdefault(request.client_index, EngineCoreOutputs())
        found = [out for out in client.outputs if out.request_id == req_id]
        if not found:
            client.outputs.append(EngineCoreOutput(req_id, []))
            found = client.outputs[-1:]
        for out in found:
            out.new_token_ids = []
            out.new_logprobs = None
            out.finish_reason = FinishReason.ERROR
            out.stop_reason = "icv: non-finite logits (the steering made this row's numbers overflow)"
        ended.append(req_id)
    scheduler.finish_requests(ended, RequestStatus.FINISHED_ERROR)
    if ended:
        logger.warning("icv: ended %d request(s) whose logits were not finite: %s", len(ended), ended)
    return ended
