"""The public API is typed: a user's type checker catches a misuse of icv's names.

mypy (the `lint` extra, pinned; ``make lint`` installs it) checks a small user program
against the package, with the repository's own configuration and cache (warm after
``make lint``, so this takes seconds).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with the lint extra (make lint)")

ROOT = Path(__file__).resolve().parent.parent


def mypy_errors(tmp_path: Path, program: str) -> list[str]:
    """mypy's error lines for ``program`` (a user's module that imports icv)."""
    user = tmp_path / "user_program.py"
    user.write_text(textwrap.dedent(program))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(user)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 2: mypy itself failed
    return [line for line in result.stdout.splitlines() if ": error:" in line]


def test_a_users_type_checker_catches_misused_results(tmp_path):
    errors = mypy_errors(
        tmp_path,
        """
        import torch

        import icv

        v: int = icv.InContextVector.load("v.safetensors")
        name: int = icv.InContextVector.load("v.safetensors").name
        steering: str = icv.steer(torch.nn.Linear(2, 2), icv.InContextVector.load("v.safetensors"))
        """,
    )
    assert len(errors) == 3, "\n".join(errors)
    assert 'expression has type "InContextVector", variable has type "int"' in errors[0]
    assert 'expression has type "str", variable has type "int"' in errors[1]
    assert '"Steering", variable has type "str"' in errors[2]


def test_correct_use_type_checks_clean(tmp_path):
    errors = mypy_errors(
        tmp_path,
        """
        import torch

        import icv

        def shifted(vector: icv.InContextVector, other: icv.InContextVector) -> icv.InContextVector:
            total = vector + 0.5 * other
            layers: torch.Tensor = total.layer_norms()
            assert layers.dim() == 1
            return total.with_metadata(recommended_strength=0.07)

        def run(model: torch.nn.Module, vector: icv.InContextVector) -> icv.Steering:
            steering = icv.steer(model, vector, 0.1)
            steering.remove()
            return steering
        """,
    )
    assert errors == []
