"""Steering inside vLLM: a plugin for its workers, its OpenAI server, and its offline ``LLM``.

* :mod:`.worker`: the ``vllm.general_plugins`` entry point; hooks the model in every
  worker and steers each request from its ``extra_args`` (per token, per step).
* :mod:`.http`: the ``vllm.endpoint_plugins`` entry point; reads the ``steering``
  field of ``/v1/completions`` and ``/v1/chat/completions`` bodies, serves
  ``GET /v1/vectors``, and says in each response which steering was applied.
* :mod:`.offline`: :class:`SteeredLLM`, vLLM's offline ``LLM`` with steering.

Nothing here imports vLLM until it is used, so the package imports without it.
"""

from .contract import PLUGIN_NAME, STEERING_ARG, VECTORS_ENV
from .offline import SteeredLLM

__all__ = ["PLUGIN_NAME", "STEERING_ARG", "SteeredLLM", "VECTORS_ENV"]
