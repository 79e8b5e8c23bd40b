"""Bad input everywhere gets a clear ICVError subclass naming the file, the line or the argument.

docs/reliability.md lists these cases with the error each one gets.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vector(model):
    return icv.extract(model, ByteTokenizer(), DEMOS, name="bad-input")


def no_hooks(model) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# -- demonstration files -----------------------------------------------------------------------

FILES = {
    # name: (content, error type, text the message must contain; {file} is the path)
    "missing column.csv": ("a,b\nonly one\n", icv.DemoError, "{file}:2: expected two columns"),
    "missing column.tsv": ("a\tb\n\nc\n", icv.DemoError, "{file}:3: expected two columns"),
    "extra column.csv": (
        "a,b\nthe food, sadly, was cold,warm food\n",
        icv.DemoError,
        "{file}:2: expected two columns (source, target), got 4; quote fields",
    ),
    "missing key.jsonl": (
        '{"source": "a", "target": "b"}\n{"source": "a"}\n',
        icv.DemoError,
        "{file}:2: expected an object with 'source' and 'target'",
    ),
    "not an object.jsonl": ('["a", "b"]\n', icv.DemoError, "{file}:1: expected an object"),
    "array in jsonl.jsonl": (
        '[["a", "b"], ["c", "d"]]\n',
        icv.DemoError,
        "name it .json, or write one object per line",
    ),
    "bad item.json": (
        '[["a", "b"],\n {"source": "c"}]',
        icv.DemoError,
        "{file}: item 1 needs the keys 'source' and 'target'",
    ),
    "empty item.json": ('[["a", " "]]', icv.DemoError, "{file}: item 0 target is empty"),
    "broken array.json": ('[["a", "b"],\n ["c"', icv.DemoError, "{file}:2: invalid JSON"),
    "empty array.json": ("[]", icv.DemoError, "{file}: no demonstrations found"),
    "invalid json.jsonl": (
        '{"source": "a", "target": "b"}\n\n{"source": \n',
        icv.DemoError,
        "{file}:3: invalid JSON",
    ),
    "deep json.jsonl": ("[" * 5000 + "\n", icv.DemoError, "{file}:1: JSON too large or too deeply nested"),
    "huge int.jsonl": ('{"source": ' + "1" * 5000 + "}\n", icv.DemoError, "{file}:1: JSON too large"),
    "number.jsonl": ('{"source": 3, "target": "b"}\n', icv.DemoError, "{file}:1: source must be a string"),
    "empty source.csv": ("a,b\n  ,b\n", icv.DemoError, "{file}:2: source is empty"),
    "empty target.tsv": ("a\t\n", icv.DemoError, "{file}:1: target is empty"),
    "huge field.csv": ("a,b\n" + "x" * 200_000 + ",y\n", icv.DemoError, "{file}:2: unreadable row"),
    "empty.jsonl": ("", icv.DemoError, "{file}: no demonstrations found"),
    "only blank lines.csv": ("\n\n  \n", icv.DemoError, "{file}: no demonstrations found"),
    "only a header.tsv": ("source\ttarget\n", icv.DemoError, "{file}: no demonstrations found"),
    "unknown format.xlsx": ("a,b\n", icv.DemoError, "{file}: unknown demonstration format '.xlsx'"),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_bad_demo_files(tmp_path, name):
    content, error, message = FILES[name]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(error) as caught:
        icv.read_demos(path)
    assert message.format(file=path) in str(caught.value)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    good = (
        '{"source": "a", "target": "b"}\n'
        if suffix == ".jsonl"
        else "a,b\n".replace(",", "," if suffix == ".csv" else "\t")
    )
    path.write_bytes(good.encode() * 2 + "caf\xe9".encode("latin-1") + b"\n")
    with pytest.raises(icv.DemoError, match=rf"latin1\{suffix}:3: not valid UTF-8"):
        icv.read_demos(path)


def test_blank_lines_and_trailing_empty_cells_are_ignored(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("source,target\n\na,b\n   \nc,d,\n\n")
    assert icv.read_demos(csv) == [icv.Demo("a", "b"), icv.Demo("c", "d")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('\n{"source": "a", "target": "b"}\n\n  \n{"source": "c", "target": "d"}\n')
    assert icv.read_demos(jsonl) == [icv.Demo("a", "b"), icv.Demo("c", "d")]


def test_a_json_file_may_hold_one_array_of_pairs_or_json_lines(tmp_path):
    expected = [icv.Demo("a", "b"), icv.Demo("c", "d")]
    array = tmp_path / "pairs.json"
    array.write_text('[\n  ["a", "b"],\n  {"source": "c", "target": "d"}\n]\n')
    assert icv.read_demos(array) == expected
    lines = tmp_path / "lines.json"
    lines.write_text('{"source": "a", "target": "b"}\n{"source": "c", "target": "d"}\n')
    assert icv.read_demos(lines) == expected


def test_line_separators_inside_json_strings_are_not_line_breaks(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"source": "a\u2028b", "target": "c\x85d\u2029"}\n{"source": "e", "target": "f"}\n{"source": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(icv.DemoError, match=r"d\.jsonl:3:"):  # line numbers as an editor counts them
        icv.read_demos(path)
    path.write_text('{"source": "a\u2028b", "target": "c"}\n', encoding="utf-8")
    assert icv.read_demos(path) == [icv.Demo("a\u2028b", "c")]


@pytest.mark.parametrize("path", ["missing.csv", "folder", "bad\0name.csv"])
def test_unreadable_demo_paths(tmp_path, path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(icv.DemoError, match="cannot read demonstrations"):
        icv.read_demos(tmp_path / path)


def test_a_path_that_is_not_a_path():
    with pytest.raises(icv.DemoError, match="not a file path"):
        icv.read_demos(3.5)


# -- demonstrations in code -----------------------------------------------------------------------

BAD_DEMOS = {
    "empty list": ([], "no demonstrations given"),
    "a string": (
        "the food was cold",
        "demos is a string, not a list of pairs, and no file 'the food was cold'",
    ),
    "a missing file": ("absent-demos.jsonl", "cannot read demonstrations from 'absent-demos.jsonl'"),
    "not iterable": (3, "must be a list"),
    "empty source": ([("", "b")], "demo 0 source is empty"),
    "blank target": ([("a", "b"), ("a", "   ")], "demo 1 target is empty"),
    "number": ([("a", 3)], "demo 0 target must be a string, got int"),
    "none": ([(None, "b")], "demo 0 source must be a string, got NoneType"),
    "bytes": ([(b"a", "b")], "must be a string, got bytes"),
    "one element": ([("a",)], "demo 0 must be a (source, target) pair"),
    "three elements": ([("a", "b", "c")], "demo 0 must be a (source, target) pair"),
    "dict without target": ([{"source": "a"}], "demo 0 needs the keys 'source' and 'target'"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEMOS))
def test_bad_demos_in_code(model, case):
    demos, message = BAD_DEMOS[case]
    with pytest.raises(icv.DemoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        icv.extract(model, ByteTokenizer(), demos)
    assert no_hooks(model)


def test_extract_reads_a_demonstration_file_given_as_a_path(model, tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(f'{{"source": "{s}", "target": "{t}"}}\n' for s, t in DEMOS))
    expected = icv.extract(model, ByteTokenizer(), DEMOS)
    for given in (path, str(path)):
        assert icv.extract(model, ByteTokenizer(), given).equal(expected)


def test_one_demo_falls_back_to_the_mean_with_a_warning(model):
    with pytest.warns(UserWarning, match="one demonstration: PCA is undefined"):
        pca = icv.extract(model, ByteTokenizer(), DEMOS[:1])
    mean = icv.extract(model, ByteTokenizer(), DEMOS[:1], method="mean")
    assert torch.equal(pca.directions, mean.directions)


def test_thousands_of_demos(model):
    demos = [(f"{s} number {i}", f"{t} number {i}") for i in range(500) for s, t in DEMOS]
    assert len(demos) == 2000
    vector = icv.extract(model, ByteTokenizer(), demos, batch_size=64, progress=False)
    assert vector.metadata["num_demos"] == 2000
    assert torch.allclose(vector.layer_norms(), torch.ones(vector.num_layers))
    assert no_hooks(model)


def test_demos_longer_than_the_context_are_cut_from_the_left(model):
    """Only the last tokens count: what lies beyond the context cannot change the vector."""
    context = model.config.max_position_embeddings
    inside = "." * context  # one token per byte: the context ends inside this filler
    long_a = [("x" * (2 * context) + inside + s, "y" * (3 * context) + inside + t) for s, t in DEMOS]
    long_b = [("q" * context + inside + s, "w" * 10 + inside + t) for s, t in DEMOS]
    with pytest.warns(
        UserWarning, match=rf"exceed the model's context of {context} tokens and were truncated from the left"
    ):
        a = icv.extract(model, ByteTokenizer(), long_a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = icv.extract(model, ByteTokenizer(), long_b)
    assert torch.isfinite(a.directions).all()
    assert torch.equal(a.directions, b.directions)
    with icv.steer(model, a):  # and the vector steers like any other
        model(torch.tensor([[1, 5, 6]]))


# -- options --------------------------------------------------------------------------------------

STEER_OPTIONS = {
    "strength NaN": (dict(strength=math.nan), icv.OptionError, "strength must be finite, got nan"),
    "strength inf": (dict(strength=math.inf), icv.OptionError, "strength must be finite, got inf"),
    "strength -inf": (dict(strength=-math.inf), icv.OptionError, "strength must be finite"),
    "strength tensor NaN": (
        dict(strength=torch.tensor(float("nan"))),
        icv.OptionError,
        "strength must be finite",
    ),
    "per-row strength inf": (dict(strength=[0.1, math.inf]), icv.OptionError, "strength[1] must be finite"),
    "strength text": (dict(strength="0.1"), icv.OptionError, "strength must be a number"),
    "layer too high": (
        dict(layers=[0, 3]),
        icv.OptionError,
        "layer 3 is out of range for a model with 3 layers",
    ),
    "layer too low": (dict(layers=[-4]), icv.OptionError, "layer -4 is out of range"),
    "layer not an int": (dict(layers=[1.5]), icv.OptionError, "layer indices must be integers"),
    "layers an int": (dict(layers=5), icv.OptionError, "layers must be layer indices"),
    "layers empty": (dict(layers=[]), icv.OptionError, "no layer selected"),
    "layer weight NaN": (dict(layers={0: math.nan}), icv.OptionError, "weight of layer 0 must be finite"),
    "profile wrong shape": (
        dict(layers=torch.ones(4)),
        icv.OptionError,
        "layer profile tensor must have shape (3,)",
    ),
    "profile inf": (
        dict(layers=torch.tensor([1.0, math.inf, 1.0])),
        icv.OptionError,
        "layer profile must be finite",
    ),
    "unknown mode": (dict(mode="push"), icv.OptionError, "unknown mode 'push'"),
    "unknown site": (dict(site="mlpp"), icv.OptionError, "unknown site 'mlpp'"),
    "unknown positions": (dict(positions="last"), icv.OptionError, "unknown positions 'last'"),
    "misspelt option": (
        dict(strenght=0.1),
        icv.UnknownOptionError,
        "icv.steer() has no option 'strenght' (did you mean 'strength'?)",
    ),
    "unknown option": (dict(temperature=0.7), icv.UnknownOptionError, "has no option 'temperature'"),
    "not a vector": (dict(vector="v.safetensors"), icv.OptionError, "vector must be an icv.InContextVector"),
}


@pytest.mark.parametrize("case", sorted(STEER_OPTIONS))
def test_bad_steer_options(model, vector, case):
    options, error, message = STEER_OPTIONS[case]
    options = {"vector": vector, **options}
    with pytest.raises(error) as caught:
        icv.steer(model, **options)
    assert message in str(caught.value)
    assert no_hooks(model) and not icv.is_steered(model)


def test_unknown_options_are_also_type_errors(model, vector):
    """Code written against Python's own TypeError for a bad keyword keeps working."""
    with pytest.raises(TypeError):
        icv.steer(model, vector, strenght=0.1)
    with pytest.raises(TypeError):
        icv.extract(model, ByteTokenizer(), DEMOS, methd="mean")


def test_every_existing_keyword_still_works(model, vector):
    with icv.steer(
        model, vector, 0.1, mode="add", site="block", layers=[0, -1], positions="prompt", architecture=None
    ):
        pass
    with icv.steer(model=model, vector=vector, strength=0.1):
        pass
    icv.extract(
        model=model,
        tokenizer=ByteTokenizer(),
        demos=DEMOS,
        method="mean",
        site="mlp",
        template="Q: {text}",
        batch_size=2,
        padding_side="left",
        name="n",
        injection_mode="add",
        injection_site="attn",
        recommended_strength=0.2,
        progress=False,
        architecture=None,
    )


EXTRACT_OPTIONS = {
    "unknown method": (dict(method="svd"), icv.OptionError, "unknown method 'svd'"),
    "unknown site": (dict(site="residual"), icv.OptionError, "unknown site 'residual'"),
    "unknown injection mode": (dict(injection_mode="push"), icv.OptionError, "unknown injection_mode 'push'"),
    "unknown injection site": (dict(injection_site="head"), icv.OptionError, "unknown injection_site 'head'"),
    "bad padding side": (
        dict(padding_side="middle"),
        icv.OptionError,
        "padding_side must be 'left' or 'right'",
    ),
    "batch size 0": (dict(batch_size=0), icv.OptionError, "batch_size must be a positive integer"),
    "batch size float": (dict(batch_size=2.5), icv.OptionError, "batch_size must be a positive integer"),
    "template without {text}": (
        dict(template="Q: {query}"),
        icv.DemoError,
        "template must be a string containing '{text}'",
    ),
    "template with other braces": (
        dict(template="{text} {x}"),
        icv.DemoError,
        "has braces other than '{text}'",
    ),
    "recommended strength NaN": (
        dict(recommended_strength=math.nan),
        icv.OptionError,
        "metadata 'recommended_strength' is not finite",
    ),
    "recommended strength text": (
        dict(recommended_strength="0.1"),
        icv.OptionError,
        "metadata 'recommended_strength' should be float",
    ),
    "name not a string": (dict(name=3), icv.OptionError, "metadata 'name' should be str"),
    "misspelt option": (
        dict(methd="mean"),
        icv.UnknownOptionError,
        "icv.extract() has no option 'methd' (did you mean 'method'?)",
    ),
}


@pytest.mark.parametrize("case", sorted(EXTRACT_OPTIONS))
def test_bad_extract_options(model, case):
    options, error, message = EXTRACT_OPTIONS[case]
    with pytest.raises(error) as caught:
        icv.extract(model, ByteTokenizer(), DEMOS, **options)
    assert message in str(caught.value)
    assert no_hooks(model)


@pytest.mark.parametrize(
    "operation, message",
    [
        (lambda v: v * math.nan, "cannot scale an in-context vector by nan"),
        (lambda v: v * math.inf, "cannot scale an in-context vector by inf"),
        (lambda v: v / 0, "cannot divide an in-context vector by zero"),
        (lambda v: v.with_metadata(recommended_strength=math.inf), "'recommended_strength' is not finite"),
        (lambda v: v.with_metadata(recommended_strength=10**400), "'recommended_strength' is too large"),
        (lambda v: v.with_metadata(num_layers=4), "num_layers follow from the directions' shape"),
        (lambda v: v.with_metadata(injection_mode="push"), "injection_mode 'push' is not one of"),
    ],
)
def test_bad_vector_operations(vector, operation, message):
    with pytest.raises(icv.OptionError, match=message.replace("(", r"\(")):
        operation(vector)


def test_every_library_error_is_an_icv_error():
    errors = [getattr(icv, name) for name in icv.__all__ if name.endswith("Error")]
    assert len(errors) >= 11
    for error in errors:
        assert issubclass(error, icv.ICVError)
