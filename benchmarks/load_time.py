"""5. Load time of the embedded model: the first call (GGUF -> safetensors conversion) vs later calls.

Each load runs in a fresh interpreter with ``ICV_CACHE_DIR`` pointing at a new
temporary folder (so the first call really converts, and the user's cache is
untouched); later calls in the same folder read the converted model.  Times are
of ``icv.load_model()`` alone, measured inside the subprocess (the interpreter's
start and ``import icv`` are reported apart).

    python benchmarks/load_time.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from harness import markdown_table

_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import icv
imported = time.perf_counter()
icv.load_model(sys.argv[1] if len(sys.argv) > 1 else None)
print(json.dumps({"import_s": imported - start, "load_s": time.perf_counter() - imported}))
"""


def timed_load(name: str | None, cache: str) -> dict[str, float]:
    env = {**os.environ, "ICV_CACHE_DIR": cache}
    command = [sys.executable, "-c", _SCRIPT] + ([name] if name else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loading failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_times(name: str | None = None, later: int = 2) -> dict[str, Any]:
    """The first load into an empty cache, then ``later`` loads from it."""
    with tempfile.TemporaryDirectory(prefix="icv-bench-cache-") as cache:
        first = timed_load(name, cache)
        cached = [timed_load(name, cache) for _ in range(later)]
    later_s = statistics.median(c["load_s"] for c in cached)
    return {
        "model": name or "embedded default",
        "first_s": first["load_s"],
        "later_s": later_s,
        "later_all": [c["load_s"] for c in cached],
        "import_s": statistics.median([first["import_s"]] + [c["import_s"] for c in cached]),
        "fraction": later_s / first["load_s"],
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        [
            result["model"],
            f"{result['first_s']:.1f}",
            f"{result['later_s']:.1f} ({', '.join(f'{s:.1f}' for s in result['later_all'])})",
            f"{result['fraction']:.3f}",
            f"{result['import_s']:.1f}",
        ]
    ]
    header = [
        "model",
        "first call s (converts)",
        "later calls s (median; each)",
        "later / first",
        "import icv s",
    ]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="name or path for icv.load_model (default: embedded)")
    parser.add_argument("--later", type=int, default=2)
    args = parser.parse_args(argv)
    print(table(load_times(args.model, args.later)))


if __name__ == "__main__":
    main()
