"""What a user of the installed package sees: the package page, the messages, the declared files.

The built wheel itself is checked by `make wheel-check` (tools/wheel_check.py), which builds the
sdist and wheel, installs the wheel alone in a fresh virtual environment and runs the commands.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
from pathlib import Path

from icv.distribution import DISTRIBUTION, pip_install

ROOT = Path(__file__).resolve().parents[1]


def _setup_module():
    spec = importlib.util.spec_from_file_location("icv_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() does not run
    return module


def test_the_package_page_keeps_absolute_links_and_drops_relative_ones():
    page = _setup_module().package_page(
        "See [the docs](docs/steering.md), [the paper](https://arxiv.org/abs/2311.06668) and [below](#install).\n"
        "![the playground](docs/img/playground.png)\n"
        "<!-- --8<-- [start:quickstart] -->\ncode\n<!-- --8<-- [end:quickstart] -->\n"
    )
    assert (
        page == "See the docs, [the paper](https://arxiv.org/abs/2311.06668) and [below](#install).\ncode\n"
    )


def test_the_readme_as_package_page_links_nowhere_relative_and_says_how_to_install():
    page = _setup_module().package_page((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not re.findall(r"\]\((?!https?://|#)", page)
    assert "--8<--" not in page
    assert f"pip install {DISTRIBUTION}" in page


def test_every_install_line_of_the_readme_and_docs_names_the_distribution():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text(encoding="utf-8").splitlines():
            for target in re.findall(r"pip install ([^\s`]+)", line):
                assert not re.match(r"'?icv(\[|'|$)", target), f"{path.name}: {line.strip()}"


def test_messages_of_the_installed_package_name_pip_extras_not_make_targets():
    for path in sorted((ROOT / "icv").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "make setup" not in text, path
        assert not re.search(r"pip install '?icv\[", text), path
    assert pip_install("vllm") == "pip install 'in-context-vectors[vllm]'"
    assert pip_install() == "pip install in-context-vectors"


def test_the_wheel_declares_the_license_the_types_and_the_playground():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["name"] == DISTRIBUTION
    assert config["metadata"]["license_expression"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (ROOT / "icv" / "py.typed").is_file()
    assert "py.typed" in config["options.package_data"]["icv"]
    console = config["options.entry_points"]["console_scripts"]
    assert re.search(r"^icv = icv\.cli", console.strip(), flags=re.M)
