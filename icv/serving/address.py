"""Where the server listens unless told otherwise (``icv serve`` and the Python API alike).

Kept apart from both: ``icv serve --help`` reads these without importing the server (and torch).
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"  # loopback: only this machine reaches it
DEFAULT_PORT = 8000
