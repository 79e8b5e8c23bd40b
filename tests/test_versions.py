"""The version ranges in setup.cfg are the tested ones: their lower ends are what `make test-min` installs."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def declared() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra, value in config["options.extras_require"].items():
        # Not part of `make test`: atheris (a fuzzing tool), the docs site's tools (`make docs`),
        # the linters, pinned exactly (`make lint`),
        # and vLLM, which lives in an environment of its own (`make setup-vllm`).
        if extra not in ("fuzz", "docs", "lint", "vllm"):
            lines += value.splitlines()
    return {_name(r.name): r for r in (Requirement(line) for line in lines if line.strip())}


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    return pins


def test_every_lower_bound_is_the_version_make_test_min_installs():
    requirements, pins = declared(), pinned()
    assert set(requirements) == set(pins), "setup.cfg and constraints-min.txt name different packages"
    for name, requirement in requirements.items():
        lower = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        assert lower == [Version(pins[name])], (
            f"{name}: setup.cfg says {requirement.specifier}, make test-min installs {pins[name]}"
        )
        assert requirement.specifier.contains(pins[name])


def test_the_core_requirements_are_bounded_above_by_their_next_major_version():
    # Majors change APIs (transformers 4 -> 5 changed what decoder layers return); a range
    # must not promise what no one has run.
    requirements = declared()
    for name in ("torch", "transformers"):
        assert any(spec.operator == "<" for spec in requirements[name].specifier), name
