"""Serving steered models: one request contract shared by every engine.

A request asks for steering with one extra body field (the official ``openai``
client sends it through ``extra_body``)::

    {"steering": [{"vector": "positive", "strength": 0.06},
                  {"vector": "formal", "strength": 0.03}],
     "steering_positions": "generated"}

:mod:`icv.serving.request` reads and checks that field; :mod:`icv.serving.library`
holds the vectors a server has loaded and turns a request's steering into the
one vector it means (``positive * 0.06 + formal * 0.03``, applied at strength 1).

The embedded server (``icv serve``, engine ``transformers``): :mod:`icv.serving.engine`
generates (one worker thread, requests batched per step), :mod:`icv.serving.app` holds
the HTTP routes, :mod:`icv.serving.server` runs them on uvicorn, and
:mod:`icv.serving.command` is the command line with its table of engines.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .library import ModelShape, VectorLibrary
    from .request import SteeringSpec, SteeringTerm, parse_steering

# Imported on first use, as icv's own names are: `icv serve --help` reaches
# icv.serving.command without loading torch.
_HOMES = {
    "ModelShape": ".library",
    "VectorLibrary": ".library",
    "SteeringSpec": ".request",
    "SteeringTerm": ".request",
    "parse_steering": ".request",
}

__all__ = ["ModelShape", "SteeringSpec", "SteeringTerm", "VectorLibrary", "parse_steering"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
