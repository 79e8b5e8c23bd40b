"""3. Extraction memory: peak resident memory of ``icv.extract`` vs ``output_hidden_states=True``.

How it is measured, and why this way: torch's CPU allocator is invisible to
tracemalloc, so each measurement runs in a fresh subprocess that loads the
model, runs one tiny warm-up forward, returns freed heap pages to the system
(``malloc_trim``), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``)
and reads the resident size; then it runs the operation ONCE over one batch of
all 2N texts, keeps its result alive, and reads the peak (``VmHWM``).  The figure
is peak minus the resident size before: what the operation added at its worst
moment (activations in flight plus what it keeps).  Where the peak mark cannot be
reset, ``ru_maxrss`` before/after is used instead (noted in the output).
Both sides run the same batch; the text length is varied (each text repeated R
times) and the number of pairs too, to show what each memory grows with.

    python benchmarks/extraction_memory.py
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from harness import MODELS, describe, markdown_table

import icv
from icv.extract import model_device
from icv.generation import left_padded

METHODS = ("extract", "hidden_states")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Give freed heap back and restart the kernel's peak-RSS mark; False where not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stretched(pairs: Sequence[Sequence[str]], repeat: int) -> list[tuple[str, str]]:
    """Each text repeated ``repeat`` times: the same pairs, ``repeat`` times the tokens."""
    return [(" ".join([s] * repeat), " ".join([t] * repeat)) for s, t in pairs]


def _operate(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], method: str):
    """(what the method keeps, its size in bytes, the padded batch)."""
    texts = [s for s, _ in pairs] + [t for _, t in pairs]
    batch = left_padded(tokenizer, texts, model_device(model))
    if method == "extract":
        vector = icv.extract(model, tokenizer, pairs, batch_size=len(texts), progress=False)
        return vector, (vector.directions.numel() + vector.layer_scales.numel()) * 4, batch
    if method == "hidden_states":
        states = model(**batch, output_hidden_states=True, use_cache=False).hidden_states
        return states, sum(h.numel() * h.element_size() for h in states), batch
    raise ValueError(f"unknown method {method!r}")


@torch.no_grad()
def run_once(model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], method: str) -> dict:
    """Peak memory the operation adds (KiB), in this process; call in a fresh one."""
    # Warm-up on two short pairs: lazy imports, kernels and LAPACK load outside the peak.
    _operate(model, tokenizer, [(s[:20], t[:20]) for s, t in pairs[:2]], method)
    exact = _reset_peak()
    before = _status_kib("VmRSS") if exact else _maxrss_kib()
    kept, kept_bytes, batch = _operate(model, tokenizer, pairs, method)
    peak = _status_kib("VmHWM") if exact else _maxrss_kib()
    del kept
    return {
        "method": method,
        "added_kib": max(0, (peak or 0) - (before or 0)),
        "kept_bytes": kept_bytes,
        "texts": 2 * len(pairs),
        "tokens": int(batch["attention_mask"].sum()),
        "padded_width": int(batch["input_ids"].shape[1]),
        "exact_peak": exact,
    }


def measure_in_subprocess(model_name: str, pairs: list[tuple[str, str]], method: str) -> dict:
    """Run :func:`run_once` in a fresh interpreter (so earlier work cannot hide or inflate it)."""
    request = json.dumps({"model": model_name, "pairs": pairs, "method": method})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        input=request,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker() -> None:
    request = json.loads(sys.stdin.read())
    model, tokenizer = MODELS[request["model"]]()
    result = run_once(model, tokenizer, [tuple(p) for p in request["pairs"]], request["method"])
    print(json.dumps({**result, "model": describe(model)}))


def measure(
    model_name: str, pairs: list[tuple[str, str]], repeats: Sequence[int], counts: Sequence[int]
) -> list[dict]:
    """Every method at each text length (all pairs), and at each pair count (shortest texts)."""
    configs = [(len(pairs), r) for r in repeats] + [(c, min(repeats)) for c in counts if c != len(pairs)]
    results = []
    for count, repeat in configs:
        chosen = stretched(pairs[:count], repeat)
        for method in METHODS:
            results.append({"repeat": repeat, **measure_in_subprocess(model_name, chosen, method)})
    return results


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def table(results: Sequence[dict]) -> str:
    rows = []
    for r in results:
        rows.append(
            [
                r["method"],
                r["texts"],
                r["repeat"],
                r["tokens"],
                r["padded_width"],
                _mib(r["added_kib"]),
                f"{r['kept_bytes'] / 2**10:.1f}",
            ]
        )
    header = ["method", "texts", "text repeated", "tokens", "padded width", "peak added (MiB)", "kept (KiB)"]
    note = "" if all(r["exact_peak"] for r in results) else "\n\n(peak from ru_maxrss: not reset)"
    return markdown_table(header, rows) + note


def main(argv: Sequence[str] | None = None) -> None:
    if argv is None and sys.argv[1:] == ["--worker"]:
        worker()
        return
    from extraction_speed import demo_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    pairs = demo_pairs(args.pairs)
    print(table(measure(args.model, pairs, args.repeats, [args.pairs // 2])))


if __name__ == "__main__":
    main()
