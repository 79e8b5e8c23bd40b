"""A real server for the serving tests: uvicorn on 127.0.0.1 (a free port), stopped at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import icv
from icv.serving import ModelShape, VectorLibrary

pytest.importorskip("starlette", reason="the serving tests need the 'serve' extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the serving tests need the 'serve' extra (starlette, uvicorn)")
httpx = pytest.importorskip("httpx", reason="the serving tests need httpx (the 'test' extra)")

from icv.serving.server import BackgroundServer  # noqa: E402

# Review sentences and their positive rewrites: the real model's demonstrations.
REVIEW_DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
    ("The room was dirty and small.", "The room was clean and spacious."),
]


def library_from(folder: Path, model) -> VectorLibrary:
    return VectorLibrary.load([folder], ModelShape.of(model))


def save_vectors(model, tok, demos, folder: Path) -> dict:
    """``positive`` (from ``demos``), ``negative`` (reversed) and ``positive_add`` (add@block), saved in ``folder``."""
    positive = icv.extract(model, tok, demos, name="positive", progress=False)
    negative = icv.extract(model, tok, [(t, s) for s, t in demos], name="negative", progress=False)
    added = positive.with_metadata(injection_mode="add", injection_site="block", name="positive_add")
    loaded = {"positive": positive, "negative": negative, "positive_add": added}
    for name, vector in loaded.items():
        vector.save(folder / f"{name}.safetensors")
    return loaded


def wait_idle(server: BackgroundServer, timeout: float = 30.0) -> None:
    """Wait until the engine has no request queued or decoding (so no hook is on the model)."""
    deadline = time.monotonic() + timeout
    while not server.engine.idle:
        assert time.monotonic() < deadline, f"the engine is still busy: {server.engine.load()}"
        time.sleep(0.01)
    assert not icv.is_steered(server.engine.model), "an idle engine left a hook on the model"


def expected(model, tok, text, steering=None, positions="all", new=8, special=True):
    """Greedy completion text by icv.steer + generate; ``steering`` is [(vector, strength), ...]."""
    ids = torch.tensor([tok(text, add_special_tokens=special)["input_ids"]])
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    if not steering:
        out = model.generate(**kwargs)
    else:
        total = None
        for vector, strength in steering:
            total = vector * strength if total is None else total + vector * strength
        with icv.steer(model, total, 1.0, positions=positions):
            out = model.generate(**kwargs)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# -- a server in a process of its own, as a user starts it ------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_icv_serve(arguments: list[str], log: Path) -> subprocess.Popen:
    """``python -m icv serve ARGUMENTS`` from the repository, its output to ``log`` (a file, not a
    pipe nobody reads while the server runs)."""
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "icv", "serve", *arguments],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path, seconds: float) -> None:
    """Wait until ``url/health`` answers 200; fail with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"icv serve did not come up in {seconds} s:\n{log.read_text()}"
        time.sleep(0.5)


def interrupt(process: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops it; killed if it has not stopped in two minutes (never left running)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


__all__ = [
    "REVIEW_DEMOS",
    "BackgroundServer",
    "expected",
    "free_port",
    "httpx",
    "interrupt",
    "library_from",
    "save_vectors",
    "start_icv_serve",
    "wait_idle",
    "wait_until_healthy",
]
