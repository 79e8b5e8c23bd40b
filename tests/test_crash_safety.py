"""Saving is atomic: a process killed mid-save leaves the old file or the new one, never a mix.

A forked child saves two large-ish vectors in turn over the same file, as fast
as it can, and is killed with SIGKILL at a random moment; after every kill the
file must load and equal one of the two.  The child's temporary file
(``.<name>.<random>.tmp``) may survive the kill; nothing else may.  Whether a random kill
leaves one depends on where it lands (between the temp file's creation and its rename: a
timing accident), so the leftover itself is tested by kills at known points: a child that
stops just before the rename, and one that stops just after it.
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
    for _ in range(24):
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


def kill_when_paused(path, vector: icv.InContextVector, after_rename: bool) -> None:
    """Fork a child that saves ``vector`` over ``path`` and stops just before (or after) the
    rename; SIGKILL it there."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            real_replace = os.replace

            def paused_replace(source, target):
                if after_rename:
                    real_replace(source, target)
                os.write(write_fd, b"1")
                time.sleep(60)  # killed here

            os.replace = paused_replace
            vector.save(path, overwrite=True)
        finally:
            os._exit(1)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1", "the child did not reach the rename"
    os.close(read_fd)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("after_rename", [False, True])
def test_a_kill_before_the_rename_leaves_the_old_file_and_one_temp_and_after_it_the_new(
    tmp_path, after_rename
):
    old, new = big_vector(1), big_vector(2)
    path = tmp_path / "v.safetensors"
    old.save(path)
    kill_when_paused(path, new, after_rename)
    assert icv.InContextVector.load(path).equal(new if after_rename else old)
    others = sorted(p.name for p in tmp_path.iterdir() if p != path)
    if after_rename:
        assert others == []  # the rename took the temp file's name away
    else:
        (temp,) = others  # the whole new vector, fsynced, under its temp name
        assert temp.startswith(".v.safetensors.") and temp.endswith(".tmp")
        assert (tmp_path / temp).read_bytes() == _bytes_of(new, tmp_path / "copy.safetensors")


def _bytes_of(vector: icv.InContextVector, where) -> bytes:
    vector.save(where)
    data = where.read_bytes()
    where.unlink()
    return data


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
