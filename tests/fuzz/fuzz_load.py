"""Long fuzzing of the vector-file loader, to run before a release (docs/reliability.md).

With atheris (``pip install -e .[fuzz]``), coverage-guided over the ``icv`` package::

    python tests/fuzz/fuzz_load.py -max_total_time=600          # ten minutes
    python tests/fuzz/fuzz_load.py -runs=200000 -jobs=2

Without atheris, or with ``--hypothesis N``, a long property-based run of the
same mutations the test suite makes (N examples)::

    python tests/fuzz/fuzz_load.py --hypothesis 50000

Every input must load as a valid vector or raise ``VectorFileError``.  Anything
else is a crash: atheris writes the input to ``crash-<sha1>`` in the current
folder (hypothesis prints it).  Keep it as ``tests/data/hostile-<what>.safetensors``
(``test_regression_inputs_are_refused`` then checks it forever) and fix the loader.
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys
import tempfile
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

import torch  # noqa: E402  (heavy imports stay outside the instrumented block)


def seeds() -> list[bytes]:
    """Valid files of several shapes: what mutations start from."""
    import icv
    from icv import storage

    metadata = dict(
        model_name="fuzz",
        model_type="llama",
        method="pca",
        extraction_site="block",
        injection_mode="rotate",
        injection_site="mlp",
        num_demos=4,
        demos_sha256="0" * 64,
        prompt_template="{text}",
    )
    files = []
    for layers, hidden, strength in [(1, 1, None), (3, 8, 0.07), (2, 32, 1.5)]:
        vector = icv.InContextVector(
            torch.randn(layers, hidden),
            {**metadata, "recommended_strength": strength},
            torch.rand(layers) + 0.5,
        )
        files.append(storage.to_bytes(vector))
    # Condition files (icv.Condition): the same property, through their own loader.
    from icv import condition

    for layers, hidden in [(1, 1), (3, 8)]:
        cond = icv.Condition(
            torch.randn(layers, hidden),
            dict(model_name="fuzz", model_type="llama", layer=layers - 1, threshold=0.1, comparison=">"),
        )
        files.append(condition.to_bytes(cond))
    return files


def check_one(data: bytes) -> None:
    """The property: a valid vector (or condition) or a VectorFileError, nothing else."""
    import icv
    from icv import condition, storage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            vector = icv.InContextVector(*storage.from_bytes(data, source="fuzz"))
        except icv.VectorFileError:
            vector = None
        try:
            cond = condition.from_bytes(data, source="fuzz")
        except icv.VectorFileError:
            cond = None
    if vector is not None:
        assert vector.directions.shape == (vector.num_layers, vector.hidden_size)
        assert bool(torch.isfinite(vector.directions).all()) and bool(
            torch.isfinite(vector.layer_scales).all()
        )
    if cond is not None:
        assert cond.directions.shape == (cond.num_layers, cond.hidden_size)
        assert bool(torch.isfinite(cond.directions).all()) and math.isfinite(cond.threshold)
        assert 0 <= cond.layer < cond.num_layers and cond.comparison in (">", "<")


def edit_header(data: bytes, rng: random.Random) -> bytes | None:
    """Replace or drop one JSON value of the header: reaches checks byte flips rarely do."""
    if len(data) < 8:
        return None
    length = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8 : 8 + length])
        section = header[rng.choice(sorted(header))]
    except Exception:  # the header no longer parses: leave it to the byte mutations
        return None
    if not isinstance(section, dict):
        return None
    key = rng.choice(sorted(section) + ["extra"])
    choices = [
        None,
        -1,
        0,
        1,
        2**64,
        1e308,
        "",
        "x",
        "F16",
        [0, 4],
        [1, 1],
        {"a": 1},
        True,
        "9" * rng.randint(1, 6000),
        "[" * rng.randint(1, 3000),
        str(rng.randint(-5, 10**6)),
    ]
    value = rng.choice(choices)
    if value is None and rng.random() < 0.5:
        section.pop(key, None)
    else:
        section[key] = value
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def run_atheris(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["icv"]):
        import icv.condition  # noqa: F401
        import icv.metadata  # noqa: F401
        import icv.storage  # noqa: F401

    corpus = Path(tempfile.mkdtemp(prefix="icv-fuzz-corpus-"))
    for i, seed in enumerate(seeds()):
        (corpus / f"seed{i}.safetensors").write_bytes(seed)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.3:
            edited = edit_header(data, rng)
            if edited is not None and len(edited) <= max_size:
                return edited
        return atheris.Mutate(data, max_size)

    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv = argv + [str(corpus)]
    if not any(arg.startswith("-max_len") for arg in argv):
        argv = argv + ["-max_len=65536"]
    atheris.Setup(argv, check_one, custom_mutator=mutator)
    atheris.Fuzz()


def run_hypothesis(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from test_storage_hostile import mutated_files

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated_files())
    def fuzz(data: bytes) -> None:
        check_one(data)

    rng = random.Random(0)
    for seed in seeds():  # header edits of the hand-picked kinds, outside hypothesis too
        for _ in range(examples // 10):
            edited = edit_header(seed, rng)
            if edited is not None:
                check_one(edited)
    fuzz()
    print(f"hypothesis: {examples} mutated files, all loaded or refused with VectorFileError")


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "--hypothesis":
        run_hypothesis(int(argv[2]) if len(argv) > 2 else 20000)
        return
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: running a long hypothesis search instead", file=sys.stderr)
        run_hypothesis(20000)
        return
    run_atheris(argv)


if __name__ == "__main__":
    main(sys.argv)
