"""A request's generated text as it grows: new pieces to stream, and where a stop string ends it.

The whole generated text is decoded again at every token (a few hundred tokens
at most, far cheaper than the forward pass), so the streamed pieces add up to
exactly the text a one-shot decode gives.  Two things are held back until the
next token says more: a trailing incomplete UTF-8 character (decoded as U+FFFD),
and a tail that might be the start of a stop string, which must never reach the
client.  A stop string ends the text before it, as OpenAI's ``stop`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """Turns a growing list of token ids into text pieces, and finds stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._text = ""
        self._sent = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """The text so far (up to, not including, a stop string once one was found)."""
        return self._text

    def update(self, token_ids: list[int]) -> str:
        """The new piece that is safe to send now that ``token_ids`` were generated."""
        if self.stopped:
            return ""
        self._text = self._decode(token_ids)
        cut = self._first_stop()
        if cut is not None:
            self._text = self._text[:cut]
            self.stopped = True
            return self._take(len(self._text))
        safe = len(self._text)
        if self._text.endswith(REPLACEMENT):
            safe = len(self._text.rstrip(REPLACEMENT))
        safe = min(safe, len(self._text) - self._stop_prefix_length())
        return self._take(max(safe, self._sent))

    def finish(self) -> str:
        """Whatever was held back, once no token will follow."""
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        piece = self._text[self._sent : end]
        self._sent = end
        return piece

    def _first_stop(self) -> int | None:
        found = [i for i in (self._text.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix_length(self) -> int:
        """The longest tail of the text that is the start of some stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
