"""Start vLLM's own OpenAI server with the plugin: the command ``icv serve --engine vllm`` runs.

It is ``vllm serve MODEL --enforce-eager --served-model-name NAME ...`` with
``VLLM_PLUGINS=icv`` and ``ICV_VLLM_VECTORS`` set; any other ``vllm serve`` option
can follow.  It runs the server module rather than the ``vllm`` command, which the
CPU build (``vllm-cpu`` 0.32.0) ships broken: it asks for the version of a
distribution named ``vllm`` and stops with ``PackageNotFoundError``.  The embedded models are served from their converted safetensors folder
under their hub name, so the vectors made for them fit.  Without a GPU the model
runs in float32 (bfloat16 is slow on CPUs without AVX-512 and drifts from
transformers' output) and vLLM's CPU KV cache gets 1 GiB unless
``VLLM_CPU_KVCACHE_SPACE`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from ...errors import OptionError
from ...models import model_source
from .contract import plugin_environment

CPU_KVCACHE_GIB = "1"
SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"  # what `vllm serve` runs


def command(
    model: str | None = None,
    vectors: Sequence[str | os.PathLike[str]] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    extra: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that start ``vllm serve`` steering with ``vectors``."""
    if not vectors:
        raise OptionError("the vLLM engine needs vector files or folders to serve (--vectors)")
    source, name = model_source(model)
    _check_vllm()
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", source, "--served-model-name", name,
            "--enforce-eager", "--host", host, "--port", str(port)]
    env = plugin_environment(vectors, os.environ)
    if not _has_gpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        if "--dtype" not in extra:
            argv += ["--dtype", "float32"]
    return argv + list(extra), env


def _check_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise OptionError(
            "vLLM is not installed in this environment: `make setup-vllm` makes .venv-vllm with it"
        )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m icv.serving.vllm.launch --vectors DIR [--model M] [-- vllm serve options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--vectors", nargs="+", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args, extra = parser.parse_known_args(argv)
    run_argv, env = command(args.model, args.vectors, host=args.host, port=args.port,
                            extra=[e for e in extra if e != "--"])
    os.execve(sys.executable, run_argv, env)


if __name__ == "__main__":
    main()
