"""What a file that is not a vector file is, and what to call instead.

``InContextVector.load`` given a GGUF control vector, a demonstrations file or a
model's weights should not answer with a parser's complaint ("header length
14064895815 does not fit the file"): it should say what the file is and which
function reads it.  Only the first bytes are looked at, and only after loading
failed, so a real vector file never pays for this.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

HEAD_BYTES = 1 << 16


def _head(path: Path) -> bytes | None:
    """The first bytes of a regular file, or None (folder, device, unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, HEAD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


def what_it_is(path: str | os.PathLike[str]) -> str | None:
    """``"a GGUF control vector: read it with icv.import_gguf(...)"`` and the like, or None if unknown."""
    head = _head(Path(path))
    if head is None:
        return None
    name = str(path)
    if head.startswith(b"GGUF"):
        if b"controlvector" in head:
            return f"a GGUF control vector: read it with icv.import_gguf({name!r}) (command line: icv import)"
        return f"a GGUF model, not a vector: load it with icv.load_model({name!r})"
    rebuild = "build the vector with icv.InContextVector(directions, metadata) and save it"
    # Before the magic bytes: a safetensors header's length may start with any byte (0x80 too).
    if _is_safetensors(head):
        if b"icv_format_version" in head:
            return None  # one of ours: the reader's own error says what is wrong with it
        weights = b'.weight"' in head or b'"model.' in head
        what = "a model's weights in safetensors" if weights else "a safetensors file without icv metadata"
        return f"{what}, not an icv vector: load models with icv.load_model(folder); make vectors with icv.extract"
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive (what torch.save writes), not a vector file: {rebuild}"
    if head.startswith(b"\x80"):
        return f"a pickle, not a vector file, and icv never unpickles files: {rebuild}"
    if head.startswith(b"\x93NUMPY"):
        return f"a NumPy array, not a vector file: {rebuild}"
    text = _text(head)
    if text is None:
        return None
    return _what_text_is(text, name)


def _is_safetensors(head: bytes) -> bool:
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _text(head: bytes) -> str | None:
    """The head as text, if it reads as text (UTF-8, no control characters but tabs and line breaks)."""
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not just a character cut at the end of the head
            return None
        text = head[: error.start].decode("utf-8-sig")
    if not text or any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return None
    return text


def _what_text_is(text: str, name: str) -> str:
    stripped = text.lstrip()
    first_line = stripped.split("\n", 1)[0]
    demos = (
        f"read them with icv.read_demos({name!r}) and make a vector with icv.extract "
        "(command line: icv extract --demos FILE --out VEC)"
    )
    if not stripped:
        return "a text file of blank lines, not a vector file"
    if stripped.startswith("{"):
        try:
            record = json.loads(first_line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict) and {"source", "target"} <= set(record):
            return f"JSON Lines demonstrations, not a vector: {demos}"
        return "a JSON file, not a vector file (vector files are binary safetensors made by icv)"
    if stripped.startswith("["):
        return f"a JSON array (demonstrations?), not a vector: {demos}"
    if "\t" in first_line or "," in first_line:
        return f"a text table (CSV/TSV demonstrations?), not a vector: {demos}"
    return "a text file, not a vector file (vector files are binary safetensors made by icv)"
