"""The README's and the docs' Python code runs as written, twice in a row (a second run must not trip over the first's files).

The README's Quickstart makes the model, demonstrations, vector and prompt that the docs pages'
examples go on with, so the pages in ``RUN`` are run in that order in one namespace, as a reader
who follows them would. Every other Python block of the docs is listed in ``NOT_RUN`` with the
reason, so a new example is either run or says why not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import icv

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Pages whose Python blocks run, in this order, in one namespace.
RUN = ("README.md", "docs/getting-started.md", "docs/steering.md", "docs/results.md")

# page -> (indices of its Python blocks that are not run, why).
NOT_RUN: dict[str, tuple[range, str]] = {
    "docs/steering.md": (
        range(1, 8),
        "fragments: each line makes a steering handle it never removes, or names vectors "
        "(positive, formal) the page does not make; tests/test_layers_sites.py, test_positions.py "
        "and test_per_row.py run the same calls; the compiled-model block compiles the embedded "
        "model (a minute or more each time), and tests/test_compiled.py runs the same calls on a "
        "tiny model, with inductor too",
    ),
    "docs/serving.md": (
        range(0, 2),
        "a client of a server the reader starts first, and the foreground server itself; "
        "tests/test_serving*.py exercise both",
    ),
    "docs/hub.md": (
        range(0, 1),
        "reaches the Hub (no network here); tests/test_hub.py runs the same calls offline",
    ),
    "docs/evaluation-engines.md": (
        range(0, 1),
        "needs vLLM (.venv-vllm) and a server; tests/test_evaluation_engines.py and "
        "tests/with_vllm/test_vllm_sweep.py run the same calls",
    ),
    "docs/conditions.md": (
        range(0, 4),
        "extract a condition on the embedded model from texts the page does not hold; "
        "tests/test_conditions.py, test_conditions_cli.py and test_conditions_eval.py run the "
        "same calls on a tiny model",
    ),
    "docs/training.md": (
        range(0, 2),
        "sketches over the reader's own pairs (`demos`, `inputs`, `style`) whose training takes a minute "
        "or more on the embedded model; tests/test_train.py, test_cli_train.py and "
        "test_evaluate_trained.py run the same calls on a tiny model",
    ),
    "docs/vllm.md": (
        range(0, 2),
        "need vLLM (.venv-vllm) and its server; tests/with_vllm run the same calls",
    ),
    "docs/evaluation-tools.md": (
        range(0, 1),
        "a client of a judge server the reader runs; tests/test_judge.py and test_judge_serve.py run the same calls",
    ),
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def pages() -> list[str]:
    """Every page a reader sees: the README and the docs site's own pages (not the result tables)."""
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def runnable(page: str) -> list[tuple[int, str]]:
    skipped = NOT_RUN.get(page, (range(0), ""))[0]
    blocks = python_blocks((ROOT / page).read_text(encoding="utf-8"))
    return [(number, block) for number, block in enumerate(blocks) if number not in skipped]


def quickstart_sentence() -> str:
    """The sentence the README says the Quickstart prints (``It prints `...` ``, wrapped or not)."""
    shown = re.search(r"It prints `([^`]+)`", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert shown, "the README no longer says what the Quickstart prints"
    return " ".join(shown.group(1).split())


def test_every_python_block_of_the_docs_is_run_or_says_why_not():
    for page in pages():
        blocks = python_blocks((ROOT / page).read_text(encoding="utf-8"))
        skipped = NOT_RUN.get(page, (range(0), ""))[0]
        assert all(number < len(blocks) for number in skipped), f"{page}: NOT_RUN names blocks it lacks"
        if page not in RUN:
            assert set(range(len(blocks))) <= set(skipped), f"{page}: a Python block neither run nor excused"
    assert "icv.load_model()" in runnable("README.md")[0][1]
    assert sum(len(runnable(page)) for page in RUN) >= 5


@pytest.mark.real_model
def test_readme_and_docs_python_runs_twice_from_a_fresh_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # what a fresh clone has: no vector files, no results folder
    printed = []
    for run in range(2):
        namespace: dict = {"__name__": f"readme_run_{run}"}
        for page in RUN:
            for number, block in runnable(page):
                exec(compile(block, f"{page} python block {number + 1}", "exec"), namespace)
                assert not icv.is_steered(namespace["model"]), (
                    f"{page} block {number + 1} leaves the model steered"
                )
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    # The Quickstart prints the paraphrase alone (one line, no closing quote), and it is the sentence
    # the README says it prints: greedy decoding in float32 on the CPU is deterministic.
    answer = printed[0].strip().splitlines()
    assert len(answer) == 1 and answer[0] and '"' not in answer[0]
    assert answer[0] == quickstart_sentence()
    assert (tmp_path / "positive.safetensors").is_file() and (tmp_path / "results" / "eval.json").is_file()


# -- shell commands ----------------------------------------------------------------------

# Pages whose `icv` commands run, in this order, from a fresh folder holding what a fresh clone
# has (recipes/): the README's, then the serving page's first steps.
RUN_SHELL = ("README.md", "docs/serving.md")

# page -> (indices of its `icv` commands that are not run, why).  Pages not in RUN_SHELL excuse all.
SHELL_NOT_RUN: dict[str, tuple[range, str]] = {
    "docs/serving.md": (
        range(2, 5),
        "`icv serve` runs in the foreground until stopped; tests/test_serving*.py start the same server",
    ),
    "docs/cli.md": (
        range(0, 100),
        "a reference of every command on the reader's own files (positive.jsonl, ./my-llama, "
        "sentences.txt, someone-elses.gguf) and the Hub; tests/test_cli.py runs each command",
    ),
    "docs/index.md": (
        range(0, 100),
        "the reader's own positive.jsonl; the README runs the same two commands",
    ),
    "docs/conditions.md": (
        range(0, 100),
        "the reader's own text files and vectors; tests/test_conditions_cli.py runs the same commands",
    ),
    "docs/hub.md": (range(0, 100), "reaches the Hub (no network here); tests/test_hub.py runs them offline"),
    "docs/evaluation-engines.md": (
        range(0, 100),
        "the reader's own files, vLLM (.venv-vllm) and a server; tests/test_evaluation_engines.py runs "
        "icv eval --engine server",
    ),
    "docs/vllm.md": (range(0, 100), "needs vLLM (.venv-vllm) and runs a foreground server"),
    "docs/evaluation-tools.md": (
        range(0, 100),
        "the reader's own files, judge server and classifier; tests/test_judge*.py, test_style_classifier.py "
        "and test_lm_eval.py run the same commands",
    ),
}


def shell_commands(text: str) -> list[str]:
    """The `icv ...` commands of a page's shell blocks (continuation lines joined, comments cut)."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash|shell|console)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ").strip()
            if line.startswith("icv "):
                commands.append(line.split("  #")[0].split(" # ")[0].strip())
    return commands


def runnable_commands(page: str) -> list[tuple[int, str]]:
    skipped = SHELL_NOT_RUN.get(page, (range(0), ""))[0]
    commands = shell_commands((ROOT / page).read_text(encoding="utf-8"))
    return [(number, command) for number, command in enumerate(commands) if number not in skipped]


def test_every_icv_command_of_the_docs_is_run_or_says_why_not():
    for page in pages():
        commands = shell_commands((ROOT / page).read_text(encoding="utf-8"))
        if page not in RUN_SHELL:
            assert not commands or page in SHELL_NOT_RUN, f"{page}: `icv` commands neither run nor excused"
    run = [command for page in RUN_SHELL for _, command in runnable_commands(page)]
    assert any("--out vectors/" in command for command in run), run  # the serving page's first step
    assert sum(1 for page in RUN_SHELL for _ in runnable_commands(page)) >= 3


@pytest.mark.real_model
def test_readme_and_docs_icv_commands_run_from_a_fresh_folder(tmp_path, monkeypatch, capsys):
    import shlex

    from icv.cli.app import main

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # what a fresh clone has; no vectors/ yet
    monkeypatch.chdir(tmp_path)
    for page in RUN_SHELL:
        for number, command in runnable_commands(page):
            code = main(shlex.split(command)[1:])
            captured = capsys.readouterr()
            assert code == 0, f"{page} command {number + 1}: {command}\n{captured.err[-2000:]}"
    assert (tmp_path / "vectors" / "positive.safetensors").is_file()
