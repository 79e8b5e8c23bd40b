"""Saving is atomic: a process killed mid-save leaves the old file or the new one, never a mix.

A forked child saves two large-ish vectors in turn over the same file, as fast
as it can, and is killed with SIGKILL at a random moment; after every kill the
file must load and equal one of the two.  The child's temporary file
(``.<name>.<random>.tmp``) may survive the kill; nothing else may.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import pytest
import torch

import icv

META = dict(
    model_name="crash-test",
    model_type="llama",
    method="mean",
    extraction_site="block",
    injection_mode="rotate",
    injection_site="mlp",
    num_demos=1,
    demos_sha256="0" * 64,
    prompt_template="{text}",
)

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork() and SIGKILL"
)


def big_vector(seed: int) -> icv.InContextVector:
    """A quarter megabyte on disk, so that a save takes long enough to be hit."""
    generator = torch.Generator().manual_seed(seed)
    return icv.InContextVector(torch.randn(16, 4096, generator=generator), {**META, "name": f"v{seed}"})


def save_forever(vectors: list[icv.InContextVector], path, ready_fd: int) -> None:
    """The child: overwrite ``path`` with each vector in turn until killed."""
    os.write(ready_fd, b"1")
    while True:
        for vector in vectors:
            vector.save(path, overwrite=True)


def test_kill_during_save_never_corrupts_the_file(tmp_path):
    old, new = big_vector(1), big_vector(2)
    path = tmp_path / "v.safetensors"
    old.save(path)
    rng = random.Random(0)
    kills, temps_left = 24, 0
    for _ in range(kills):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                os.close(read_fd)
                save_forever([new, old], path, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        os.read(read_fd, 1)  # the child is running: it saves from now on
        os.close(read_fd)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        back = icv.InContextVector.load(path)
        assert back.equal(old) or back.equal(new), "a killed save left a file that is neither"
        others = sorted(p.name for p in tmp_path.iterdir() if p != path)
        assert len(others) <= 1, f"more than the dead child's temp file is left: {others}"
        for name in others:
            assert name.startswith(".v.safetensors.") and name.endswith(".tmp"), name
            (tmp_path / name).unlink()  # stale temp files are the caller's to clean, not the loader's
            temps_left += 1
    print(f"{temps_left} of {kills} kills left a temp file")
    # The kills must have landed inside saves, or the test proves nothing.
    assert temps_left > 0, "no kill hit a save in progress"


def test_interrupted_save_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    old = big_vector(1)
    path = tmp_path / "v.safetensors"
    old.save(path)

    def interrupted(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        big_vector(2).save(path, overwrite=True)
    monkeypatch.undo()
    assert icv.InContextVector.load(path).equal(old)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_disk_full_is_a_vector_file_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    old = big_vector(1)
    path = tmp_path / "v.safetensors"
    old.save(path)

    def full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(icv.VectorFileError, match="No space left"):
        big_vector(2).save(path, overwrite=True)
    monkeypatch.undo()
    assert icv.InContextVector.load(path).equal(old)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_refuses_to_overwrite_without_overwrite(tmp_path):
    old = big_vector(1)
    path = tmp_path / "v.safetensors"
    old.save(path)
    with pytest.raises(icv.VectorExistsError, match="overwrite=True"):
        big_vector(2).save(path)
    assert icv.InContextVector.load(path).equal(old)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_a_file_appearing_during_save_is_not_replaced(tmp_path, monkeypatch):
    """The existence check and the final rename are one atomic step (a hard link)."""
    path = tmp_path / "v.safetensors"
    from icv import storage

    real_write = storage._write_temp

    def racing_write(data, folder, name):
        path.write_bytes(b"someone else's file")  # appears after the check, before the rename
        return real_write(data, folder, name)

    monkeypatch.setattr(storage, "_write_temp", racing_write)
    with pytest.raises(icv.VectorExistsError):
        big_vector(1).save(path)
    assert path.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


def test_saving_where_hard_links_are_unsupported(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"

    def no_links(*_args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    big_vector(1).save(path)
    assert icv.InContextVector.load(path).equal(big_vector(1))
    with pytest.raises(icv.VectorExistsError):
        big_vector(2).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


@pytest.mark.parametrize("bad", ["bad\0name.safetensors", 3])
def test_saving_to_a_bad_path(tmp_path, bad):
    with pytest.raises(icv.VectorFileError):
        big_vector(1).save(tmp_path / bad if isinstance(bad, str) else bad)
