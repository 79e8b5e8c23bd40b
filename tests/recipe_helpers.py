"""What the recipe tests share: the recipes folder, loading its scripts as modules, a decoding tokenizer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tiny import ByteTokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_module(name: str, path: Path) -> ModuleType:
    """The Python file at ``path`` imported as a module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_common(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """recipes/_common.py as a module, with ``sys.path`` restored after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # run.py files prepend recipes/
    return load_module(name, RECIPES / "_common.py")


class DecodingTokenizer(ByteTokenizer):
    """The tiny byte tokenizer plus the decoding that generation needs."""

    def batch_decode(self, rows: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return ["".join(chr(96 + int(t) % 26) for t in row if int(t) > 2) for row in rows]
