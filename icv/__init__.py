"""icv: steer a language model with in-context vectors read from a few demonstrations.

    model, tok = icv.load_model()
    vec = icv.extract(model, tok, [("The food was cold.", "The food was hot."), ...])
    with icv.steer(model, vec):
        model.generate(...)
"""

__version__ = "0.1.0"

from .calibrate import calibrate
from .demos import Demo, read_demos
from .evaluate import evaluate
from .errors import (
    ArchitectureError,
    DemoError,
    FormatVersionError,
    ICVError,
    ModelLoadError,
    ModelMismatchError,
    ModelNameWarning,
    OptionError,
    ScorerError,
    StackedSteeringWarning,
    SteeringError,
    UnknownOptionError,
    VectorExistsError,
    VectorFileError,
)
from .extract import extract
from .layers import Architecture, register_architecture
from .models import load_model
from .steer import Steering, is_steered, steer, steer_averaged, unsteer
from .vector import InContextVector

__all__ = [
    "Architecture",
    "ArchitectureError",
    "Demo",
    "DemoError",
    "FormatVersionError",
    "ICVError",
    "InContextVector",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelNameWarning",
    "OptionError",
    "StackedSteeringWarning",
    "Steering",
    "ScorerError",
    "SteeringError",
    "UnknownOptionError",
    "VectorExistsError",
    "VectorFileError",
    "__version__",
    "calibrate",
    "evaluate",
    "extract",
    "is_steered",
    "load_model",
    "read_demos",
    "register_architecture",
    "steer",
    "steer_averaged",
    "unsteer",
]
