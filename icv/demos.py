"""Demonstrations: (source, target) pairs, how to read them, how to format them.

A demonstration is a source text (negative, toxic, informal ...) and the rewrite
the model should learn to produce.  Everything that accepts demonstrations goes
through :func:`as_demos`, so the checks live in one place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DemoError

RAW_TEMPLATE = "{text}"

# The reference code (Liu et al.) deletes each of these characters wherever it occurs in a
# demonstration text, then strips whitespace at both ends, before reading it: "didn't." is
# read as "didnt", so the last token is a word piece, not the final ".".
REFERENCE_SPECIAL_CHARACTERS = "~!@#$%^&*()_+`-={}[]|\\:;\"'<>,.?/"
_DELETE_SPECIAL = str.maketrans("", "", REFERENCE_SPECIAL_CHARACTERS)

# How demonstration texts are cleaned before they are read: not at all, or as the reference code does.
TEXT_CLEANINGS = ("none", "reference")


@dataclass(frozen=True)
class Demo:
    """One demonstration: a text and the wanted rewrite of it.

    Args:
        source: the text as it is (e.g. a negative review).
        target: the same text in the wanted style (the positive review).
    """

    source: str
    target: str


def _check_text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DemoError(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DemoError(f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\\ud800" escape: no tokenizer reads it
        raise DemoError(f"{where} holds a lone UTF-16 surrogate, which is not text") from None
    return value


DEMO_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")


def as_demos(demos: Iterable[object] | str | os.PathLike[str]) -> list[Demo]:
    """Validate and normalise demonstrations given as ``Demo``, pairs or dicts, or read them from a file.

    A path (``pathlib.Path``, or a string naming a file or ending in a demonstration
    file's suffix) is read with :func:`read_demos`.
    """
    if isinstance(demos, os.PathLike) or (isinstance(demos, str) and _names_a_file(demos)):
        return read_demos(demos)
    if isinstance(demos, str):
        raise DemoError(
            f"demos is a string, not a list of pairs, and no file {demos[:80]!r} exists: give "
            "(source, target) pairs, or the path of a demonstration file (.jsonl, .json, .csv, .tsv)"
        )
    if isinstance(demos, bytes) or not isinstance(demos, Iterable):
        raise DemoError(
            "demos must be a list of (source, target) pairs or icv.Demo objects, or a file's path"
        )
    pairs = _pairs(demos)
    if not pairs:
        raise DemoError("no demonstrations given: at least one (source, target) pair is needed")
    return pairs


def _names_a_file(text: str) -> bool:
    if text.lower().endswith(DEMO_SUFFIXES):
        return True
    try:
        return "\n" not in text and Path(text).is_file()
    except (OSError, ValueError):  # too long for a path, a NUL byte
        return False


def _pairs(demos: Iterable[object], where: str = "demo {}") -> list[Demo]:
    result = []
    for i, item in enumerate(demos):
        if isinstance(item, Demo):
            source, target = item.source, item.target
        elif isinstance(item, dict):
            if "source" not in item or "target" not in item:
                raise DemoError(f"{where.format(i)} needs the keys 'source' and 'target'")
            source, target = item["source"], item["target"]
        elif isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2:
            source, target = item
        else:
            raise DemoError(f"{where.format(i)} must be a (source, target) pair, got {item!r:.60}")
        here = where.format(i)
        result.append(Demo(_check_text(source, f"{here} source"), _check_text(target, f"{here} target")))
    return result


def demos_sha256(demos: Sequence[Demo], template: str) -> str:
    """A stable fingerprint of the demonstrations and the template they were read with."""
    payload = json.dumps([template] + [[d.source, d.target] for d in demos], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_template(template: str) -> str:
    if not isinstance(template, str) or "{text}" not in template:
        raise DemoError(f"template must be a string containing '{{text}}', got {template!r:.60}")
    try:
        template.format(text="")
    except (KeyError, IndexError, ValueError):
        raise DemoError(
            f"template {template!r:.60} has braces other than '{{text}}' (double them: '{{{{')"
        ) from None
    return template


def format_text(template: str, text: str) -> str:
    return template.format(text=text)


def strip_special_characters(text: str) -> str:
    """The reference code's cleaning: delete every character of
    :data:`REFERENCE_SPECIAL_CHARACTERS` anywhere in ``text``, then strip surrounding whitespace.

    ``"I didn't like it - at all."`` becomes ``"I didnt like it  at all"`` (the double
    space where the hyphen was stays, as in the reference).
    """
    return text.translate(_DELETE_SPECIAL).strip()


def clean_demos(demos: Sequence[Demo], cleaning: str) -> list[Demo]:
    """``demos`` with both texts cleaned by ``cleaning`` (one of :data:`TEXT_CLEANINGS`)."""
    if cleaning not in TEXT_CLEANINGS:
        raise DemoError(f"unknown text cleaning '{cleaning}': choose one of {', '.join(TEXT_CLEANINGS)}")
    if cleaning == "none":
        return list(demos)
    cleaned = []
    for i, demo in enumerate(demos):
        source, target = strip_special_characters(demo.source), strip_special_characters(demo.target)
        for side, text, original in (("source", source, demo.source), ("target", target, demo.target)):
            if not text:
                raise DemoError(
                    f"demo {i} {side} {original!r:.60} is empty once punctuation and special "
                    "characters are deleted (the reference code's cleaning)"
                )
        cleaned.append(Demo(source, target))
    return cleaned


# -- files ---------------------------------------------------------------------------


def read_demos(path: str | os.PathLike[str]) -> list[Demo]:
    """Read demonstrations from JSONL (``source``/``target``), JSON, CSV or TSV (two columns).

    JSONL holds one ``{"source": ..., "target": ...}`` object per line.  A ``.json`` file
    may be JSON Lines too, or one array of such objects or of ``[source, target]`` pairs.
    CSV/TSV files may start with a ``source,target`` header line.  Blank lines are
    skipped.

    Args:
        path: the file; its suffix (``.jsonl``, ``.json``, ``.csv``, ``.tsv``) says its format.

    Returns:
        The demonstrations, in the file's order.

    Raises:
        DemoError: an unreadable file, or a row with one column, more than two non-empty
            ones, or an empty text (the message names the file and the line, or the
            array's item).
    """
    try:
        file = Path(path)
    except TypeError:
        raise DemoError(f"{path!r:.60} is not a file path") from None
    try:
        raw = file.read_bytes()
    except OSError as error:
        raise DemoError(f"cannot read demonstrations from '{file}': {error.strerror or error}") from None
    except ValueError as error:  # e.g. a NUL byte in the path
        raise DemoError(f"cannot read demonstrations from {str(file)[:200]!r}: {error}") from None
    return parse_demos(raw, file)


def parse_demos(raw: bytes, name: str | os.PathLike[str]) -> list[Demo]:
    """Demonstrations from a file's contents, read as :func:`read_demos` reads the file ``name``.

    ``name`` decides the format (by its suffix) and is what errors name: contents that
    did not come from a file of this machine (an upload) are read by the same rules.
    """
    file = Path(name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DemoError(f"{file}:{line}: not valid UTF-8 text") from None
    suffix = file.suffix.lower()
    if suffix == ".json" and text.lstrip().startswith("["):
        demos = _read_json_array(text, file)
    elif suffix in (".jsonl", ".json"):
        demos = _read_jsonl(text, file)
    elif suffix in (".csv", ".tsv", ".txt"):
        demos = _read_delimited(text, file, "\t" if suffix != ".csv" else ",")
    else:
        raise DemoError(f"{file}: unknown demonstration format '{suffix}' (use .jsonl, .csv or .tsv)")
    if not demos:
        raise DemoError(f"{file}: no demonstrations found")
    return demos


def _read_jsonl(text: str, file: Path) -> list[Demo]:
    demos = []
    # Only "\n" ends a record: str.splitlines() would also split at U+2028 and
    # other separators that JSON strings may hold unescaped, and miscount lines.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise DemoError(f"{file}:{number}: invalid JSON ({error.msg})") from None
        except (ValueError, RecursionError):  # integers past the digit limit, deep nesting
            raise DemoError(f"{file}:{number}: JSON too large or too deeply nested") from None
        if not isinstance(item, dict) or "source" not in item or "target" not in item:
            hint = (
                " (one array of pairs for the whole file? name it .json, or write one object per line)"
                if isinstance(item, list)
                else ""
            )
            raise DemoError(f"{file}:{number}: expected an object with 'source' and 'target'{hint}")
        demos.append(_demo_at(item["source"], item["target"], file, number))
    return demos


def _read_json_array(text: str, file: Path) -> list[Demo]:
    """A ``.json`` file holding one array of ``{"source", "target"}`` objects or ``[source, target]`` pairs."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise DemoError(f"{file}:{error.lineno}: invalid JSON ({error.msg})") from None
    except (ValueError, RecursionError):
        raise DemoError(f"{file}: JSON too large or too deeply nested") from None
    return _pairs(items, where=f"{file}: item {{}}")


def _read_delimited(text: str, file: Path, delimiter: str) -> list[Demo]:
    demos: list[Demo] = []
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # a field past csv's size limit, a NUL byte ...
            raise DemoError(f"{file}:{max(reader.line_num, 1)}: unreadable row ({error})") from None
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        while len(row) > 2 and not row[-1].strip():
            row = row[:-1]  # trailing empty cells ("a,b,") are harmless
        if len(row) != 2:
            # More than two usually means an unquoted delimiter inside a sentence:
            # taking the first two cells would make a wrong demonstration silently.
            hint = f"; quote fields that contain {delimiter!r}" if len(row) > 2 else ""
            raise DemoError(f"{file}:{number}: expected two columns (source, target), got {len(row)}{hint}")
        if not demos and [c.strip().lower() for c in row[:2]] == ["source", "target"]:
            continue
        demos.append(_demo_at(row[0], row[1], file, number))
    return demos


def _demo_at(source: object, target: object, file: Path, number: int) -> Demo:
    try:
        return Demo(_check_text(source, "source"), _check_text(target, "target"))
    except DemoError as error:
        raise DemoError(f"{file}:{number}: {error}") from None
