"""Hostile input at a running server: memory and time of a hostile GGUF upload, and one broken row in a batch.

Run: ``python benchmarks/serving_safety.py`` (a tiny random llama; a few seconds), or
``python benchmarks/run.py --only safety``.  Measures:

* for GGUF control vectors of about 6 KB declaring ``direction.1000000`` and
  ``direction.1099511627776`` (1,536 values wide), uploaded to ``/v1/vectors/upload``: the
  status, the time to the answer and the growth of the process's peak memory (``VmHWM``,
  reset through ``/proc/self/clear_refs``; the server runs on a thread of this process);
* for a batch of four good requests (two greedy, two sampled with seeds) decoded together with
  one whose vector drives its logits to NaN: what the broken one got, and how many good rows
  give exactly the tokens they give alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import httpx  # noqa: E402
from test_hostile_sizes import WIDE, control_vector, status_kb  # noqa: E402
from test_row_isolation import GOOD, GREEDY, broken_vector, run  # noqa: E402
from tiny import char_tokenizer, tiny_model  # noqa: E402

from icv.serving import ModelShape, VectorLibrary  # noqa: E402
from icv.serving.engine import Failed  # noqa: E402
from icv.serving.server import BackgroundServer  # noqa: E402
from icv.serving.steering import RowSteering  # noqa: E402


def hostile_uploads(folder: Path) -> list[str]:
    """One line per hostile upload: its status, time to the answer and peak memory growth."""
    lines = []
    model = tiny_model("llama")
    with BackgroundServer(
        model, char_tokenizer(), VectorLibrary(ModelShape.of(model)), max_tokens=8
    ) as server:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            http.get("/health").raise_for_status()
            for block in (1_000_000, 1_099_511_627_776):
                path = control_vector(
                    folder / f"{block}.gguf", {f"direction.{block}": np.ones(WIDE, np.float32)}
                )
                Path("/proc/self/clear_refs").write_text("5")
                before = status_kb("VmRSS")
                start = time.perf_counter()
                response = http.post(
                    "/v1/vectors/upload",
                    params={"name": "hostile", "filename": "b.gguf"},
                    content=path.read_bytes(),
                    headers={"content-type": "application/octet-stream"},
                )
                seconds = time.perf_counter() - start
                grew = (status_kb("VmHWM") - before) / 1024
                lines.append(
                    f"| `direction.{block}` | {path.stat().st_size} | {response.status_code} | "
                    f"{seconds * 1000:.0f} | {grew:.1f} |"
                )
    return lines


def broken_row() -> str:
    """What the broken row got, and how many good rows gave exactly what they give alone."""
    model, tok = tiny_model("llama"), char_tokenizer()
    good = [(prompt, params, None) for prompt, params in GOOD]
    alone = [run(model, tok, [request])[0].token_ids for request in good]
    together = run(
        model, tok, [*good[:2], ("the food", GREEDY, RowSteering(broken_vector(model, tok))), *good[2:]]
    )
    failed = together.pop(2)
    same = sum(r.token_ids == a for r, a in zip(together, alone, strict=True))
    assert isinstance(failed, Failed)
    return (
        f"The broken row got {failed.error.status} `{failed.error.code}`; good rows identical to alone: "
        f"{same}/{len(alone)}."
    )


def report() -> str:
    """The section of docs/benchmarks.md (benchmarks/run.py --only safety)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        uploads = hostile_uploads(Path(folder))
    return "\n".join(
        [
            "| GGUF upload declaring | bytes | status | ms to the answer | peak memory growth (MB) |",
            "|---|---|---|---|---|",
            *uploads,
            "",
            "A batch of four good unsteered requests (two greedy, two sampled with seeds) decoded "
            "with one whose vector drives its logits to NaN. " + broken_row(),
        ]
    )


if __name__ == "__main__":
    print(report())
