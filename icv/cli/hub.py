"""``icv push`` and ``icv pull``: vectors to and from the Hugging Face Hub (through :mod:`icv.hub`).

Hub ids also work wherever another command takes a vector (``read_vector``); these two move a
vector with its model card, or fetch one into the Hub's cache (or a file) without using it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import PROG, Command, check_new_file, read_vector, say


def configure_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vector",
        metavar="VEC",
        help="a vector file, a GGUF control vector, a save_pretrained folder or a Hub id",
    )
    parser.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub model repository (made if missing)")
    parser.add_argument("--private", action="store_true", default=None, help="make a new repository private")
    parser.add_argument(
        "--revision", metavar="BRANCH", help="the branch to commit to (default: the default one)"
    )
    parser.add_argument("--message", metavar="TEXT", help="the commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--description", metavar="TEXT", help="what the vector does, for its model card")
    parser.add_argument(
        "--license",
        default="apache-2.0",
        metavar="ID",
        help="the vector's license on the Hub (default: apache-2.0)",
    )


def run_push(args: argparse.Namespace) -> int:
    # The token comes from huggingface_hub (HF_TOKEN, or `hf auth login`): never from the
    # command line, where other users of the machine could read it.
    vector = read_vector(args.vector)
    url = vector.push_to_hub(
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        create_pr=args.create_pr,
        description=args.description,
        license=args.license,
    )
    say(url, sys.stdout)
    return 0


def configure_pull(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub model repository of a vector")
    parser.add_argument("--revision", metavar="REV", help="a branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="the Hub cache (default: HF_HUB_CACHE)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the vector file here")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_pull(args: argparse.Namespace) -> int:
    from ..hub import is_hub_id, resolve
    from ..storage import write_file
    from ..vector import InContextVector

    if not is_hub_id(args.repo_id):
        args.parser.error(f"'{args.repo_id}' is not a Hub id (owner/name)")
    if args.out is not None:
        check_new_file(args.out, args.force)
    file = resolve(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    vector = InContextVector.load(file)  # checked as every vector file is, before it is kept
    if args.out is None:
        say(str(file), sys.stdout)
    else:
        write_file(file.read_bytes(), args.out, overwrite=args.force, what="a vector")
        say(str(args.out), sys.stdout)
    say(f"{PROG} pull: {vector!r}")
    return 0


PUSH = Command(
    "push", "upload a vector with its model card to the Hugging Face Hub", configure_push, run_push
)
PULL = Command(
    "pull", "fetch a vector from the Hugging Face Hub into its cache (or a file)", configure_pull, run_pull
)
