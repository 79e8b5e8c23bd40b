"""icv: steer a language model with in-context vectors read from a few demonstrations.

model, tok = icv.load_model()
vec = icv.extract(model, tok, [("The food was cold.", "The food was hot."), ...])
with icv.steer(model, vec):
    model.generate(...)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public names are imported on first use, not here: `import icv` (and so `icv --help`)
# must not pay for torch and transformers.  name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Architecture": "layers",
    "ArchitectureError": "errors",
    "Condition": "condition",
    "DefaultStrengthWarning": "strength",
    "Demo": "demos",
    "DemoError": "errors",
    "EngineError": "errors",
    "FormatVersionError": "errors",
    "ICVError": "errors",
    "InContextVector": "vector",
    "ModelLoadError": "errors",
    "ModelMismatchError": "errors",
    "ModelNameWarning": "errors",
    "Rule": "condition",
    "OptionError": "errors",
    "PromptFormWarning": "errors",
    "ScorerError": "errors",
    "StackedSteeringWarning": "errors",
    "Steering": "steer",
    "SteeringError": "errors",
    "StaticSteering": "compiled",
    "UnknownOptionError": "errors",
    "VectorExistsError": "errors",
    "VectorFileError": "errors",
    "calibrate": "calibrate",
    "chat_reply_template": "prompts",
    "evaluate": "evaluate",
    "export_gguf": "gguf",
    "extract_condition": "condition_search",
    "extract": "extract",
    "import_gguf": "gguf",
    "is_steered": "steer",
    "load_model": "models",
    "prepare_for_compile": "compiled",
    "read_demos": "demos",
    "register_architecture": "layers",
    "steer": "steer",
    "steer_averaged": "steer",
    "train": "train",
    "unsteer": "steer",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # what editors and type checkers see (`X as X`: a re-export, not an unused import)
    from .calibrate import calibrate as calibrate
    from .compiled import StaticSteering as StaticSteering, prepare_for_compile as prepare_for_compile
    from .condition import Condition as Condition, Rule as Rule
    from .condition_search import extract_condition as extract_condition
    from .demos import Demo as Demo, read_demos as read_demos
    from .errors import (
        ArchitectureError as ArchitectureError,
        DemoError as DemoError,
        EngineError as EngineError,
        FormatVersionError as FormatVersionError,
        ICVError as ICVError,
        ModelLoadError as ModelLoadError,
        ModelMismatchError as ModelMismatchError,
        ModelNameWarning as ModelNameWarning,
        OptionError as OptionError,
        PromptFormWarning as PromptFormWarning,
        ScorerError as ScorerError,
        StackedSteeringWarning as StackedSteeringWarning,
        SteeringError as SteeringError,
        UnknownOptionError as UnknownOptionError,
        VectorExistsError as VectorExistsError,
        VectorFileError as VectorFileError,
    )
    from .evaluate import evaluate as evaluate
    from .extract import extract as extract
    from .gguf import export_gguf as export_gguf, import_gguf as import_gguf
    from .layers import Architecture as Architecture, register_architecture as register_architecture
    from .models import load_model as load_model
    from .prompts import chat_reply_template as chat_reply_template
    from .steer import (
        Steering as Steering,
        is_steered as is_steered,
        steer as steer,
        steer_averaged as steer_averaged,
        unsteer as unsteer,
    )
    from .strength import DefaultStrengthWarning as DefaultStrengthWarning
    from .train import train as train
    from .vector import InContextVector as InContextVector


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule such as ``icv.prompts``) on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'icv' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``icv.extract`` (and the other functions named like their module) the function.

    Importing a submodule binds it on its package (``icv.extract = <module>``); with the
    names loaded lazily, that binding would hide the function of the same name.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
