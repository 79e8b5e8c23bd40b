"""The README's Python code runs as written, twice in a row (a second run must not trip over the first's files)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import icv

README = Path(__file__).resolve().parents[1] / "README.md"


# Blocks that need what a plain checkout does not run: an environment of their own (vLLM:
# `make setup-vllm`), run only where it is installed, and clients of a server the reader starts
# first (`icv serve`), which tests/test_serving*.py exercise.
OPTIONAL = {"vllm"}
SERVER = "http://127.0.0.1:"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def needs(block: str) -> set[str]:
    """What a block needs that this test does not provide: missing optional packages, a running server."""
    imported = set(re.findall(r"^(?:from|import) (\w+)", block, flags=re.M))
    missing = {name for name in imported & OPTIONAL if importlib.util.find_spec(name) is None}
    return missing | ({"a running server"} if SERVER in block else set())


def test_the_readme_has_python_blocks_to_run():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if not needs(b)]
    assert len(runnable) >= 5 and "icv.load_model()" in runnable[0]


@pytest.mark.real_model
def test_readme_python_runs_twice_from_a_fresh_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # what a fresh clone has: no vector files, no results folder
    blocks = [b for b in python_blocks(README.read_text(encoding="utf-8")) if not needs(b)]
    printed = []
    for run in range(2):
        namespace: dict = {"__name__": f"readme_run_{run}"}
        for number, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {number + 1}", "exec"), namespace)
            assert not icv.is_steered(namespace["model"]), f"block {number + 1} leaves the model steered"
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    # The Quickstart prints the paraphrase alone: one line, no closing quote, no commentary after it.
    answer = printed[0].strip().splitlines()
    assert len(answer) == 1 and answer[0] and '"' not in answer[0]
    assert (tmp_path / "positive.safetensors").is_file() and (tmp_path / "results" / "eval.json").is_file()
