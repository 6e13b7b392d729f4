"""Queries from a stream (``kgclip search INDEX < queries.txt``), one per line, handed out in chunks of
what has arrived so far: a file of 100k queries is searched in batches of up to ``chunk`` queries (the
encoders batch them), while a person or a pipe writing one query at a time gets each answer at once.

A thread reads the lines into a bounded queue, so memory stays bounded however long the stream is.
Lines are decoded as UTF-8 with replacement (a bad byte never ends the batch); blank lines are left
out; a line that is not a usable query (too long: :data:`retrieval.text.MAX_QUERY_CHARS`) is reported
to ``skip(line_number, reason)`` and left out.
"""

from __future__ import annotations

import queue
import threading
from typing import BinaryIO, Callable, Iterator

from ..errors import QueryError
from ..text import MAX_QUERY_CHARS, clean_text

_END = object()
SHOW_SKIPS = 5  # skipped lines reported one by one; the rest are counted (:attr:`QueryStream.skipped`)
LINE_BYTES = 64 * MAX_QUERY_CHARS  # a longer line is skipped unread (white space could fold it shorter)


class QueryStream:
    """Iterate :meth:`chunks` for lists of cleaned queries; :attr:`count` queries were handed out and
    :attr:`skipped` lines left out so far."""

    def __init__(self, stream: BinaryIO, skip: Callable[[int, str], None] | None = None, chunk: int = 256):
        self.chunk = max(1, int(chunk))
        self.skip = skip or (lambda no, why: None)
        self.count = 0
        self.skipped = 0
        self._q: queue.Queue = queue.Queue(maxsize=4 * self.chunk)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="kgclip-stdin")
        self._thread.start()

    def _read(self, stream: BinaryIO) -> None:
        try:
            no = 0
            while True:
                raw = stream.readline(LINE_BYTES + 1)  # a line without an end is not held whole
                if not raw:
                    break
                no += 1
                if len(raw) > LINE_BYTES and not raw.endswith(b"\n" if isinstance(raw, bytes) else "\n"):
                    while raw and not raw.endswith(b"\n" if isinstance(raw, bytes) else "\n"):
                        raw = stream.readline(LINE_BYTES)  # the rest of the line, dropped
                    raw = None
                self._q.put((no, raw))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = e
        finally:
            self._q.put(_END)

    def _query(self, item) -> str | None:
        no, raw = item
        if raw is None:
            self._skip(no, f"query too long: over {LINE_BYTES} bytes, the limit is {MAX_QUERY_CHARS} characters")
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if not text.strip():
            return None
        try:
            return clean_text(text)
        except QueryError as e:
            self._skip(no, str(e))
            return None

    def _skip(self, no: int, why: str) -> None:
        self.skipped += 1
        if self.skipped <= SHOW_SKIPS:
            self.skip(no, why)

    @property
    def shown(self) -> int:
        """How many skipped lines were reported to ``skip`` (the first :data:`SHOW_SKIPS`)."""
        return min(self.skipped, SHOW_SKIPS)

    def chunks(self) -> Iterator[list[str]]:
        """Lists of queries: each waits for one query, then takes whatever else has arrived (up to
        ``chunk``) without waiting for more."""
        done = False
        while not done:
            out: list[str] = []
            item = self._q.get()
            while True:
                if item is _END:
                    done = True
                    break
                q = self._query(item)
                if q is not None:
                    out.append(q)
                if len(out) >= self.chunk:
                    break
                if not out:  # nothing usable yet: wait for the next line
                    item = self._q.get()
                    continue
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if out:
                self.count += len(out)
                yield out
        if self._error is not None:
            raise self._error
