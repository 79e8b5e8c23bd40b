"""``icv push`` and ``icv pull``: vectors and conditions to and from the Hugging Face Hub (:mod:`icv.hub`).

Hub ids also work wherever another command takes a vector (``read_vector``); these two move a
vector or a condition (:class:`icv.Condition`) with its model card, or fetch one into the Hub's
cache (or a file) without using it.  Which of the two a file is, its header says
(:func:`icv.condition.is_condition_file`); a folder or repository, the name of the file it holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import PROG, Command, check_new_file, read_vector, say

if TYPE_CHECKING:
    from ..condition import Condition
    from ..vector import InContextVector


def configure_push(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vector",
        metavar="VEC_OR_COND",
        help="a vector file, a GGUF control vector, a condition file, a save_pretrained folder (of either) or a Hub id",
    )
    parser.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub model repository (made if missing)")
    parser.add_argument("--private", action="store_true", default=None, help="make a new repository private")
    parser.add_argument(
        "--revision", metavar="BRANCH", help="the branch to commit to (default: the default one)"
    )
    parser.add_argument("--message", metavar="TEXT", help="the commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument(
        "--description",
        metavar="TEXT",
        help="what the vector does (or the condition matches), for its model card",
    )
    parser.add_argument(
        "--license",
        default="apache-2.0",
        metavar="ID",
        help="its license on the Hub (default: apache-2.0)",
    )


def run_push(args: argparse.Namespace) -> int:
    # The token comes from huggingface_hub (HF_TOKEN, or `hf auth login`): never from the
    # command line, where other users of the machine could read it.
    item: InContextVector | Condition = read_either(args.vector)
    url = item.push_to_hub(
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
    parser.add_argument(
        "repo_id", metavar="OWNER/NAME", help="the Hub model repository of a vector or a condition"
    )
    parser.add_argument("--revision", metavar="REV", help="a branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="the Hub cache (default: HF_HUB_CACHE)")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the vector (or condition) file here"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_pull(args: argparse.Namespace) -> int:
    from ..condition import Condition
    from ..hub import CONDITION_FILE, is_hub_id, resolve
    from ..storage import write_file
    from ..vector import InContextVector

    if not is_hub_id(args.repo_id):
        args.parser.error(f"'{args.repo_id}' is not a Hub id (owner/name)")
    if args.out is not None:
        check_new_file(args.out, args.force)
    file = resolve(args.repo_id, revision=args.revision, cache_dir=args.cache_dir, kind="any")
    # Checked as every file of its kind is, before it is kept (a condition's repository holds
    # condition.safetensors: read as a condition, refused if it holds anything else).
    item = Condition.load(file) if file.name == CONDITION_FILE else InContextVector.load(file)
    kind = "a condition" if isinstance(item, Condition) else "a vector"
    if args.out is None:
        say(str(file), sys.stdout)
    else:
        write_file(file.read_bytes(), args.out, overwrite=args.force, what=kind)
        say(str(args.out), sys.stdout)
    say(f"{PROG} pull: {item!r}")
    return 0


def read_either(name: str) -> InContextVector | Condition:
    """The vector or condition the command line names: a file (its header says which), a folder or a Hub id."""
    from ..condition import Condition, is_condition_file
    from ..hub import CONDITION_FILE, resolve

    file = resolve(name, kind="any")
    if file.name == CONDITION_FILE or is_condition_file(file):
        return Condition.load(file)
    return read_vector(file)


PUSH = Command(
    "push",
    "upload a vector or condition with its model card to the Hugging Face Hub",
    configure_push,
    run_push,
)
PULL = Command(
    "pull",
    "fetch a vector or condition from the Hub into its cache (or a file)",
    configure_pull,
    run_pull,
)
