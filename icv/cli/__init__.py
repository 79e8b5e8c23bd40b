"""The ``icv`` command: extract, inspect, try, combine and carry in-context vectors from a shell.

One module per subcommand (``extract``, ``inspect``, ``generate``, ``combine``, ``gguf``
for ``export``/``import``, ``evaluate`` for ``eval``, ``serve``, ``hub`` for ``push``/``pull``), each with a
``configure(parser)`` and a ``run(args) -> int`` and the :class:`~icv.cli.common.Command`
row that names them; :data:`~icv.cli.app.COMMANDS` lists the rows once, so a new
subcommand is one more module and one more row.  Argument types live in
:mod:`icv.arguments` (``icv serve``'s options use them too); helpers every subcommand
shares in :mod:`icv.cli.common`.

Exit codes: 0 success, 2 usage errors (argparse), 1 for the library's own errors
(:class:`icv.ICVError`), whose message is printed without a traceback unless
``--debug`` is given.  Nothing imported at the top of these modules loads torch or
transformers: ``icv --help`` and usage errors stay instant, and each subcommand
imports what it needs when it runs.
"""

from __future__ import annotations

from .app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
