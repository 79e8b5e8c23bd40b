"""``icv inspect``: a vector's metadata and per-layer scales, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..arguments import positive_int
from .common import Command, read_vector

if TYPE_CHECKING:
    from ..vector import InContextVector


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vector",
        metavar="VEC",
        help="a vector file (.safetensors), a GGUF control vector, a save_pretrained folder or a Hub id (owner/name)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the metadata, per-layer scales and norms as JSON"
    )
    parser.add_argument(
        "--columns",
        type=positive_int,
        default=3,
        metavar="N",
        help="layers per line of the table (default: 3)",
    )


def _strength_line(vector: InContextVector) -> str:
    m = vector.metadata
    if m["recommended_strength"] is not None:
        return f"{m['recommended_strength']:g} (for {m['injection_mode']}@{m['injection_site']})"
    from ..strength import default_strength

    guess = default_strength(m["injection_mode"], vector.num_layers)
    return (
        f"none recorded (steering guesses {guess:g} for {m['injection_mode']} on {vector.num_layers} layers)"
    )


def _layer_table(vector: InContextVector, columns: int) -> list[str]:
    """Per layer, what varies: the residual stream's scale, the shift's own norm (when the file
    knows it), and the direction's norm unless it is 1 everywhere."""
    shifts = vector.shift_norms()
    norms = vector.layer_norms().tolist()
    table = {"scale": vector.layer_scales.tolist()}
    notes = ["scale: the residual stream's typical norm at that layer"]
    if shifts is not None:
        table["shift"] = shifts.tolist()
        notes.append("shift: the norm of the demonstrations' shift there")
    if all(abs(norm - 1.0) < 1e-4 for norm in norms):
        notes.append("every direction has norm 1")
    else:
        table["norm"] = norms
        notes.append("norm: the direction's norm")
    head = f"{'layer':>5}" + "".join(f" {name:>9}" for name in table)
    cells = [
        f"{layer:>5}" + "".join(f" {values[layer]:>9.4g}" for values in table.values())
        for layer in range(vector.num_layers)
    ]
    header = "   ".join([head] * min(columns, len(cells)))
    rows = ["   ".join(cells[i : i + columns]) for i in range(0, len(cells), columns)]
    return ["; ".join(notes), header, *rows]


def _training_lines(training: dict | None) -> list[str]:
    """What ``icv.train`` did, when it made the vector."""
    if not training:
        return []
    before, after = training.get("held_out_loss_before"), training.get("held_out_loss_after")
    held = (
        f"held-out loss {before:.4g} -> {after:.4g} on {training.get('held_out_pairs')} pairs"
        if isinstance(before, float) and isinstance(after, float)
        else "no held-out pairs"
    )
    sha = str(training.get("pairs_sha256", ""))[:12]
    return [
        f"trained               {training.get('level')} by {training.get('objective')}, "
        f"{training.get('steps')} steps (best {training.get('best_step')}) on {training.get('pairs')} pairs "
        f"(sha256 {sha}) at strength {training.get('strength')}, seed {training.get('seed')}",
        f"                      {held}; from '{training.get('start')}'",
    ]


def run(args: argparse.Namespace) -> int:
    vector = read_vector(args.vector)
    m = vector.metadata
    if args.json:
        shifts = vector.shift_norms()
        report = {
            "file": str(args.vector),
            "metadata": m,
            "layer_norms": vector.layer_norms().tolist(),
            "layer_scales": vector.layer_scales.tolist(),
            "shift_norms": None if shifts is None else shifts.tolist(),
        }
        print(json.dumps(report, indent=2))
        return 0
    demos = f"{m['num_demos']} demos" + (f" (sha256 {m['demos_sha256'][:12]})" if m["demos_sha256"] else "")
    lines = [
        f"file                  {args.vector}",
        f"name                  {m['name']}",
        f"model                 {m['model_name'] or 'unknown name'} ({m['model_type'] or 'unknown type'})",
        f"layers x hidden       {m['num_layers']} x {m['hidden_size']}",
        f"method                {m['method']}, {demos}",
        f"read at / applied as  {m['extraction_site']} / {m['injection_mode']}@{m['injection_site']}",
        f"recommended strength  {_strength_line(vector)}",
        f"template              {m['prompt_template']!r}",
        *_training_lines(m.get("training")),
        f"format                icv v{m['icv_format_version']}, written by icv {m['library_version']}",
        "",
        *_layer_table(vector, args.columns),
    ]
    print("\n".join(lines))
    return 0


COMMAND = Command("inspect", "show a vector's metadata and per-layer scales", configure, run)
