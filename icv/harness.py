"""lm-evaluation-harness: a steered model that ``lm_eval`` runs on any of its tasks.

``ICVLM`` is lm-eval's Hugging Face model (``HFLM``) with an icv steering live around each of
its forward passes and generations: every mode, site, position choice, additive scale and
per-layer profile of :func:`icv.steer`.  It is registered in lm-eval's model registry as
``icv`` when this module is imported.

lm-eval 0.4.13 (the newest release) has no entry-point discovery for model backends: its
registry holds only the models it names itself, so a plugin cannot make
``lm_eval --model icv`` work without being imported.  Hence ``python -m icv.harness``: lm-eval's
own command line, with this module imported first::

    python -m icv.harness --model icv \\
        --model_args pretrained=smollm2,vector=positive.safetensors,strength=0.07 \\
        --tasks sentiment_mc --include_path benchmarks/lm-eval

Model arguments (besides HFLM's own, e.g. ``batch_size``): ``vector`` (a vector file, GGUF
control vector, folder or Hub id), ``strength`` (default: the vector's recommended one),
``mode``, ``site``, ``positions``, ``scale``, and ``layers``: indices and ranges
separated by ``;`` (``2-10;-1``), or a per-layer profile ``layer:weight`` (``3:0.5;4:1``);
lm-eval splits its arguments at commas, so commas cannot separate layers here.
``pretrained`` is anything :func:`icv.load_model` loads (the embedded ``smollm2``, a folder,
a ``.gguf`` file, a Hub id).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .arguments import layer_list
from .errors import OptionError
from .vector import InContextVector

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as error:  # pragma: no cover - the message is the point
    from .distribution import pip_install

    raise ImportError(f"icv.harness needs lm-eval: {pip_install('lm-eval')} ({error})") from error

MODEL_NAME = "icv"


def parse_layers(text: object) -> list[int] | dict[int, float] | None:
    """``layers`` as lm-eval passes it: ``"2-10;-1"`` (layers) or ``"3:0.5;4:1"`` (a profile).

    Args:
        text: the argument's value (lm-eval turns a lone number into an int).
    """
    if text is None or text == "":
        return None
    parts = [p.strip() for p in str(text).split(";") if p.strip()]
    try:
        if any(":" in p for p in parts):
            profile: dict[int, float] = {}
            for part in parts:
                layer, _, weight = part.partition(":")
                profile[int(layer)] = float(weight)
            return profile
        return layer_list(",".join(parts))
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise OptionError(
            f"layers={text!r:.80}: write layers as 2-10;-1 or a profile as 3:0.5;4:1 ({error})"
        ) from None


def _dtype(name: object) -> torch.dtype:
    """HFLM's ``dtype`` argument as a torch dtype (``auto`` and none: float32, icv's default)."""
    if name is None or name == "auto":
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise OptionError(f"dtype={name!r:.40}: use float32, float16 or bfloat16")
    return dtype


def read_vector(source: str | Path) -> InContextVector:
    """A vector from a file, a GGUF control vector, a folder or a Hub id.

    Args:
        source: where the vector is.
    """
    from .gguf import import_gguf, is_gguf_file
    from .hub import resolve

    file = resolve(source)
    return import_gguf(file) if is_gguf_file(file) else InContextVector.load(file)


@register_model(MODEL_NAME)
class ICVLM(HFLM):
    """lm-eval's ``HFLM`` steered by an in-context vector.

    Args:
        pretrained: the model: a name :func:`icv.load_model` knows, a folder, a ``.gguf`` file
            or a Hub id (or a loaded transformers model, with ``tokenizer``).
        vector: the vector (file, GGUF control vector, folder or Hub id), or a loaded one.
        strength: the strength; ``None``: the vector's recommended one.
        mode: ``rotate`` or ``add``; ``None``: the vector's.
        site: ``block``, ``mlp`` or ``attn``; ``None``: the vector's.
        layers: layers (``"2-10;-1"``), a profile (``"3:0.5;4:1"``), or as :func:`icv.steer`
            takes them.
        positions: ``all``, ``prompt`` or ``generated``.
        scale: ``activation`` or ``shift`` (with ``mode=add``).
        **kwargs: HFLM's own arguments (``batch_size``, ``max_length`` ...); with a model by
            name, ``device`` and ``dtype`` (default float32) say how icv loads it.
    """

    def __init__(
        self,
        pretrained: Any,
        vector: str | Path | InContextVector,
        strength: float | None = None,
        mode: str | None = None,
        site: str | None = None,
        layers: Any = None,
        positions: str = "all",
        scale: str = "activation",
        **kwargs: Any,
    ) -> None:
        if isinstance(pretrained, (str, Path)):
            # icv loads it (names, .gguf files and the embedded models that HFLM does not know),
            # with HFLM's device and dtype arguments.
            from .models import load_model

            device = kwargs.pop("device", None)
            model, tokenizer = load_model(
                str(pretrained), dtype=_dtype(kwargs.pop("dtype", None)), device=device, progress=False
            )
            kwargs.setdefault("tokenizer", tokenizer)
            pretrained = model
        kwargs.setdefault("device", str(next(pretrained.parameters()).device))
        self.vector = vector if isinstance(vector, InContextVector) else read_vector(vector)
        if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))):
            raise OptionError(f"strength must be a number, got {strength!r:.40}")
        self.steer_options: dict[str, Any] = {
            "strength": None if strength is None else float(strength),
            "mode": mode,
            "site": site,
            "layers": parse_layers(layers) if isinstance(layers, (str, int)) else layers,
            "positions": positions,
            "scale": scale,
        }
        super().__init__(pretrained=pretrained, **kwargs)
        # Check everything now (a bad layer, mode or a vector of another model), not at the
        # first request of a long run.
        with self._steered():
            pass

    @contextmanager
    def _steered(self) -> Iterator[None]:
        from .steer import steer

        options = dict(self.steer_options)
        strength = options.pop("strength")
        with steer(self.model, self.vector, strength, **options):
            yield

    def _model_call(self, *args: Any, **kwargs: Any) -> Any:
        with self._steered():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._steered():
            return super()._model_generate(*args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``icv`` model registered (``python -m icv.harness ...``).

    Args:
        argv: the arguments (default: the process's).
    """
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
