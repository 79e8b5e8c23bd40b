"""Mutation check of the site tables: a wrong entry for any family must fail a test.

For each family of ``icv.layers.ARCHITECTURES`` (``--engine transformers``) or of
``icv.serving.vllm.sites.VLLM_ARCHITECTURES`` (``--engine vllm``), copies the working tree
(tracked and untracked, not ignored files) into a temporary folder, appends to the table's
module a line that swaps that family's ``mlp`` and ``attn`` paths (or sets the entry
``--entry`` gives), and runs there the tests that check that family's sites, for that
family only.  Prints one line per family and test; exits 1 if some mutant passed all of
its family's tests (the tables' tests would not have caught it).

    python tools/mutate_sites.py --engine transformers --python .venv/bin/python
    python tools/mutate_sites.py --engine vllm --python .venv-vllm/bin/python --together
    python tools/mutate_sites.py --engine transformers --entry bloom:mlp.dense_4h_to_h:self_attention

``--together`` swaps every family in one copy and runs all their tests at once: each
family's test reads only its own entry, so this is the same check, with one start of the
(slow) vLLM probe instead of one per family.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENGINES = {
    # table module, table name, test node ids per family ({} = the family)
    "transformers": (
        "icv/layers.py",
        "ARCHITECTURES",
        [
            "tests/test_layers_sites.py::test_site_modules_are_the_modules_transformers_names[{}]",
            "tests/test_layers_sites.py::test_each_site_and_mode_equals_the_reference_formula[{}]",
            "tests/test_layers_sites.py::test_extraction_at_each_site_reads_the_independently_named_module[{}]",
        ],
    ),
    "vllm": (
        "icv/serving/vllm/sites.py",
        "VLLM_ARCHITECTURES",
        ["tests/with_vllm/test_vllm_sites.py::test_the_plugins_site_modules_are_the_modules_vllm_names[{}]"],
    ),
}


def families(python: str, engine: str) -> list[str]:
    module, table, _ = ENGINES[engine]
    name = module.removesuffix(".py").replace("/", ".")
    out = subprocess.run(
        [python, "-c", f"from {name} import {table}; print(' '.join(sorted({table})))"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def copy_tree(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def mutation(table: str, family: str, entry: tuple[str, str] | None) -> str:
    old = f"{table}[{family!r}]"
    mlp, attn = entry if entry else (f"{old}.attn", f"{old}.mlp")
    mlp, attn = (repr(mlp), repr(attn)) if entry else (mlp, attn)
    return f"\n{old} = Architecture(layers={old}.layers, mlp={mlp}, attn={attn})  # mutant\n"


def run(python: str, engine: str, mutants: dict[str, tuple[str, str] | None]) -> dict[str, dict[str, str]]:
    """{family: {test node id: PASSED or FAILED or ERROR}} with every mutant applied at once."""
    module, table, tests = ENGINES[engine]
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder)
        copy_tree(copy)
        with open(copy / module, "a") as file:
            for family, entry in mutants.items():
                file.write(mutation(table, family, entry))
        nodes = [test.format(family) for family in mutants for test in tests]
        done = subprocess.run(
            [python, "-m", "pytest", "-q", "-rA", "-p", "no:randomly", "-p", "no:cacheprovider", *nodes],
            cwd=copy,
            env={**os.environ, "PYTHONPATH": str(copy)},
            capture_output=True,
            text=True,
        )
    outcomes = dict(
        (node, outcome)
        for outcome, node in re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
    )
    return {
        family: {test.format(family): outcomes.get(test.format(family), "NOT RUN") for test in tests}
        for family in mutants
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), default="transformers")
    parser.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    parser.add_argument("--together", action="store_true", help="every mutant in one copy and one run")
    parser.add_argument("--entry", help="FAMILY:MLP:ATTN, set this entry instead of swapping")
    parser.add_argument("families", nargs="*", help="default: every family of the table")
    args = parser.parse_args()
    mutants: dict[str, tuple[str, str] | None]
    if args.entry:
        family, mlp, attn = args.entry.split(":")
        mutants = {family: (mlp, attn)}
    else:
        mutants = dict.fromkeys(args.families or families(args.python, args.engine))
    if args.together or len(mutants) == 1:
        results = run(args.python, args.engine, mutants)
    else:
        results = {}
        for family, entry in mutants.items():
            results.update(run(args.python, args.engine, {family: entry}))
    survivors = []
    for family, tests in results.items():
        for node, outcome in tests.items():
            print(f"{family:12} {outcome:8} {node}", flush=True)
        if not any(outcome in ("FAILED", "ERROR") for outcome in tests.values()):
            survivors.append(family)
    print(f"{len(results) - len(survivors)} of {len(results)} mutants caught", end="")
    print(f"; survived: {', '.join(survivors)}" if survivors else "")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
