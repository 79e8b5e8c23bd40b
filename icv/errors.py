"""Every error the library raises on purpose derives from :class:`ICVError`.

Callers can catch ``icv.ICVError`` for any failure that is the user's input
(demonstrations, files, options, mismatched models); anything else escaping the
library is a bug.  Each subclass also derives from the closest built-in
exception so that generic handlers (``except ValueError``) keep working.
"""

from __future__ import annotations


class ICVError(Exception):
    """Base class of every error raised on purpose by ``icv``."""


class DemoError(ICVError, ValueError):
    """Demonstrations are missing, empty, of the wrong type, or unreadable."""


class OptionError(ICVError, ValueError):
    """An option has an unknown name or a value outside its domain."""


class UnknownOptionError(OptionError, TypeError):
    """A keyword argument that the function does not have (usually a typo).

    Also a ``TypeError``, which is what Python raises for an unknown keyword, so
    code written against plain Python semantics keeps working.
    """


class ArchitectureError(ICVError, LookupError):
    """The model's decoder layers (or their MLP / attention) cannot be located."""


class ModelMismatchError(ICVError, ValueError):
    """A vector was made for another model (hidden size, layer count, type or name)."""


class VectorFileError(ICVError, OSError):
    """A vector file cannot be read, is malformed, or fails validation."""


class FormatVersionError(VectorFileError):
    """A vector file was written by a newer, unknown format version."""


class VectorExistsError(ICVError, FileExistsError):
    """Saving would overwrite an existing file and ``overwrite`` was not given."""


class SteeringError(ICVError, RuntimeError):
    """Steering cannot be applied (batch mismatch, conflicting threads, ...)."""


class ModelLoadError(ICVError, OSError):
    """A model cannot be found or converted (missing package, bad path)."""


class ScorerError(ICVError, RuntimeError):
    """An evaluation scorer cannot run (missing optional package, bad return value)."""


class RequestError(ICVError, ValueError):
    """A serving request is malformed or asks for something the server cannot do.

    Carries what an OpenAI-compatible server answers with: an HTTP ``status``
    (4xx), the request field at fault (``param``) and a short machine-readable
    ``code``; :meth:`to_openai` gives the body of OpenAI's error shape.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def to_openai(self) -> dict[str, dict[str, object]]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class EngineError(ICVError, RuntimeError):
    """A generation engine failed: a server that cannot be reached or answered an error, vLLM that cannot start.

    Args:
        message: what went wrong and what to do.
        status: the HTTP status a server answered with (``None`` when there was no answer).
    """

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


# -- warnings: a user can filter them by class ----------------------------------------


class ModelNameWarning(UserWarning):
    """A vector is used with a model of another name but the same type, width and depth."""


class PromptFormWarning(UserWarning):
    """A vector's recommended strength was calibrated for another prompt form (demos in it or not),
    or the demonstrations written into a prompt are not the ones the vector was made from."""


class StackedSteeringWarning(UserWarning):
    """A steering handle (not a ``with`` block) runs on a model that other steerings already steer."""
