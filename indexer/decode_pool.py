"""A pool of decode worker processes that bounds the time any one file may take.

:class:`DecodePool` runs :func:`indexer.decode.decode_item` in worker processes, yields results in
input order, and gives up on a file that takes longer than ``timeout`` seconds: the pool is replaced
and the file reported as timed out.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from retrieval.paths import env, env_int

from .decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT, Decoded, decode_item
from .sources import Item

# Niceness the decode workers add to the build's (KGCLIP_DECODE_NICE; default 0 = the same priority).
# Where the encoder fills every core (a CPU build), a worker that preempts one of its threads stalls
# the batch at the next operator; at a lower priority it takes the idle moments instead, but may then
# fall behind. lite on 2 noisy cores: 500 images, five alternating runs, 103 img/s at nice 10 vs 90 at
# nice 0; 1000 images, three runs each, 83-95 vs 80-100 with the encoder waiting ~1 s for decodes at
# nice 10. Not a clear gain, so off by default; with a GPU or spare cores it changes nothing.
DECODE_NICE = 0


def decode_nice() -> int:
    """The niceness decode workers add to their own (KGCLIP_DECODE_NICE, else DECODE_NICE)."""
    n = env_int("DECODE_NICE")
    return DECODE_NICE if n is None else min(19, n)


_W: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when the one that started it dies (a SIGKILLed build
    must not leave a decoder stuck on a hostile file behind). Elsewhere idle workers notice on their own."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(transform, max_pixels, max_bytes):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _die_with_parent()
    nice = decode_nice()
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own guard (max_pixels) applies, with a clear reason
    _W.update(transform=transform, max_pixels=max_pixels, max_bytes=max_bytes)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _decode_in_worker(item: Item) -> Decoded:
    return decode_item(item, _W["transform"], _W["max_pixels"], _W["max_bytes"])


def _worker_main(feed, results, current, transform, max_pixels, max_bytes) -> None:
    """A decode process: ``(seq, item)`` in on ``feed``, ``(seq, Decoded)`` out on ``results``, until
    ``None`` or a closed pipe.

    Items waiting in ``feed`` are taken into a local queue before each decode, so that pipe stays
    nearly empty and the main process never blocks sending to it. Results leave through a sender
    thread: while the main process is busy encoding and not reading, decoding goes on (a pipe holds
    only a few 150 KB results). ``current`` (shared memory) holds the sequence number of the
    item being decoded, so a crash or a hang is pinned on the right file even when results of earlier
    items had not left the process yet.
    """
    _init_worker(transform, max_pixels, max_bytes)
    out: queue.SimpleQueue = queue.SimpleQueue()

    def pump():
        try:
            while (msg := out.get()) is not None:
                results.send(msg)
        except (OSError, EOFError):
            pass

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    parent = os.getppid()
    todo: deque = deque()
    try:
        while True:
            while not todo or feed.poll(0):
                # idle: check now and then that the main process still lives. A forked worker holds
                # copies of the pipes' other ends, so a killed main process may never look like EOF
                if not todo and not feed.poll(1.0):
                    if os.getppid() != parent:
                        return
                    continue
                msg = feed.recv()  # the main process's own items (Connection.recv, as multiprocessing's)
                if msg is None:
                    return
                todo.append(msg)
            seq, item = todo.popleft()
            current.value = seq
            d = _decode_in_worker(item)
            current.value = -1
            out.put((seq, d))
    except (EOFError, OSError, KeyboardInterrupt):
        return
    finally:
        out.put(None)
        sender.join(1.0)  # not forever: with no reader left, its last send may never finish


SEND_AHEAD_BYTES = 32 << 10  # pickled items queued to one busy worker: far below a pipe's buffer
RESULTS_PIPE_BYTES = 1 << 20  # Linux's default most (fs.pipe-max-size): six 150 KB lite inputs


def _grow_pipe(conn) -> None:
    """Let a worker's results pipe hold RESULTS_PIPE_BYTES, not 64 KiB (Linux): results decoded while
    the main process encodes wait there, not in the worker, and are read in one go."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), RESULTS_PIPE_BYTES)
    except (ImportError, OSError, ValueError):
        pass


class _Worker:
    """One decode process and its two pipes; ``queue`` holds the ``(seq, item, nbytes)`` sent to it
    whose results have not come back, in the order it decodes them; ``since``: when the oldest of them
    became the oldest (the time bound runs from there)."""

    def __init__(self, ctx, pool: "DecodePool"):
        feed_r, self.feed = ctx.Pipe(duplex=False)
        self.conn, results_w = ctx.Pipe(duplex=False)
        self.current = ctx.Value("q", -1, lock=False)
        self.proc = ctx.Process(target=_worker_main, daemon=True,
                                args=(feed_r, results_w, self.current, pool.transform, pool.max_pixels,
                                      pool.max_bytes))
        _grow_pipe(self.conn)
        self.proc.start()
        feed_r.close()
        results_w.close()
        self.queue: deque = deque()
        self.since = time.monotonic()

    def send(self, seq: int, item: Item, data: bytes) -> None:
        if not self.queue:
            self.since = time.monotonic()
        self.queue.append((seq, item, len(data)))
        try:
            self.feed.send_bytes(data)
        except OSError:  # the worker has died: its results pipe says so, and the item is sent again
            pass

    def can_take(self, nbytes: int, depth: int) -> bool:
        if not self.queue:
            return True
        return len(self.queue) < depth and sum(n for _s, _i, n in self.queue) + nbytes <= SEND_AHEAD_BYTES

    def stop(self) -> None:
        try:
            self.feed.close()
            self.conn.close()
        finally:
            if self.proc.is_alive():
                self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():  # pragma: no cover - a process that ignores SIGTERM
                self.proc.kill()
                self.proc.join(5)


class DecodePool:
    """Decode items in ``workers`` processes (0 = in this process, no time bound), in order.

    At most ``window`` items are in flight, so memory stays bounded however long
    the input. A file that takes longer than ``timeout`` seconds is reported as
    timed out; its worker is replaced (a hung decoder cannot be interrupted) and
    the items queued behind it go to the new one.

    Each worker has its own pipes and the main process waits on them directly, with
    no handler threads: decoding 1000 flickr8k files through one worker cost the
    main process 0.3-0.45 ms of CPU a file, against 1.4-2.9 ms with
    ``multiprocessing.Pool`` and a task per file; on 2 cores that CPU comes out of
    the encoder's share (benchmarks/build.py, ``cpu_ms_per_image``). A worker that
    dies (a native decoder's crash) is noticed at once, when its pipe closes: its
    file is reported and the rest of its queue goes to a new worker.
    """

    def __init__(self, transform: Callable, workers: int = 0, timeout: float = DEFAULT_TIMEOUT,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                 window: int | None = None, start_method: str | None = None):
        self.transform = transform
        self.workers = max(0, int(workers))
        self.timeout = float(timeout)
        self.max_pixels = int(max_pixels)
        self.max_bytes = int(max_bytes)
        self.window = int(window or max(8, self.workers * 8))
        # fork (as torch's DataLoader does) starts workers in milliseconds; spawn re-imports torch per worker
        default = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.start_method = start_method or env("MP_START", default)
        self.restarts = 0
        self._procs: list[_Worker] = []

    def _start(self):
        ctx = mp.get_context(self.start_method)
        self._procs = [_Worker(ctx, self) for _ in range(self.workers)]

    def close(self):
        procs, self._procs = self._procs, []
        for w in procs:
            w.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def imap(self, items: Iterable[Item]) -> Iterator[Decoded]:
        if self.workers == 0:
            from PIL import Image

            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                for it in items:
                    yield decode_item(it, self.transform, self.max_pixels, self.max_bytes)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            return
        yield from self._imap(iter(items))

    def _imap(self, source: Iterator[Item]) -> Iterator[Decoded]:
        from multiprocessing.connection import wait
        from multiprocessing.reduction import ForkingPickler

        first = next(source, None)
        if first is None:
            return
        if not self._procs:
            self._start()
        source = _chain(first, source)
        depth = max(1, -(-self.window // self.workers))
        done: dict[int, Decoded] = {}
        held: Item | None = None  # the next item, pickled but waiting for a worker with room
        held_data = b""
        sent = emitted = 0

        def fill():
            nonlocal held, held_data, sent
            while sent - emitted < self.window:
                if held is None:
                    held = next(source, None)
                    if held is None:
                        return
                    held_data = bytes(ForkingPickler.dumps((sent, held)))  # what Connection.send sends
                w = min(self._procs, key=lambda p: len(p.queue))
                if not w.can_take(len(held_data), depth):
                    return
                w.send(sent, held, held_data)
                held, sent = None, sent + 1

        def replace(i: int, reason: str, crashed: bool) -> None:
            """Report the item worker i is on with ``reason``, start a new worker and send it the others
            that worker held: those queued, and those decoded whose results died with it."""
            old = self._procs[i]
            old.stop()
            culprit = old.current.value
            if culprit not in [s for s, _it, _n in old.queue]:
                # between items: a worker that died there (killed from outside) wronged no file; one
                # that stopped answering is stuck on its oldest item as far as anyone can tell
                culprit = None if crashed else old.queue[0][0]
            rest = []
            for s, it, _n in old.queue:
                if s == culprit:
                    done[s] = Decoded(it, reason=reason, seconds=time.monotonic() - old.since)
                else:
                    rest.append((s, it, _n))
            self.restarts += 1
            new = self._procs[i] = _Worker(mp.get_context(self.start_method), self)
            for s, it, _n in rest:
                new.send(s, it, bytes(ForkingPickler.dumps((s, it))))

        fill()
        while emitted < sent:
            while emitted not in done:
                now = time.monotonic()
                busy = [w for w in self._procs if w.queue]
                ready = wait([w.conn for w in busy], max(0.0, min(w.since + self.timeout for w in busy) - now))
                for i, w in enumerate(self._procs):
                    if not w.queue:
                        continue
                    if w.conn in ready:
                        try:
                            seq, d = w.conn.recv()
                        except (EOFError, OSError):  # the worker died (a crash in a native decoder)
                            replace(i, "the decoder crashed on this file", crashed=True)
                            continue
                        w.queue.popleft()
                        w.since = time.monotonic()
                        done[seq] = d
                    elif time.monotonic() - w.since >= self.timeout:
                        replace(i, f"timed out after {self.timeout:g} s", crashed=False)
            yield done.pop(emitted)
            emitted += 1
            fill()


def _chain(first, rest):
    yield first
    yield from rest
