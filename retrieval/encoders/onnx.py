"""ONNX Runtime inference for the CPU towers (the lite CNN, plain-BERT sentence encoders).

On a 2-core CPU, ONNX Runtime runs EfficientNet-Lite0 about 2.4x faster than a frozen
TorchScript module, and the MiniLM text tower without importing torch at all (torch's
import alone is about 3 s of a cold query). A tower is exported once with
``torch.onnx.export`` into the kgclip cache, checked against the torch output it came
from, and loaded from there by every later process; anything that goes wrong on the way
(no onnxruntime, an export this torch cannot do, a numerical mismatch) falls back to torch.

``KGCLIP_BACKEND=torch`` turns the ONNX path off; ``KGCLIP_BACKEND=onnx`` makes a
failure to use it an error instead of a fallback. GPUs always run torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_write
from ..errors import ModelError
from ..paths import cache_dir, env, env_int

log = logging.getLogger(__name__)

EXPORT_VERSION = "2"  # bump when an export function changes the graph it writes (2: stored pre-optimised)
BACKENDS = ("auto", "onnx", "torch")


def backend() -> str:
    b = env("BACKEND").lower() or "auto"
    if b not in BACKENDS:
        raise ModelError(f"KGCLIP_BACKEND={b!r} is not one of {', '.join(BACKENDS)}")
    return b


def wanted(device: str) -> bool:
    """Whether a tower on ``device`` should try ONNX Runtime."""
    if not device.startswith("cpu") or backend() == "torch":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend() == "onnx":
            raise ModelError("KGCLIP_BACKEND=onnx needs onnxruntime (pip install onnxruntime)") from None
        return False
    return True


def model_path(name: str, signature: str) -> Path:
    """Where the exported graph for ``name`` with weights ``signature`` lives in the cache."""

    key = hashlib.sha256(f"{name}|{signature}|{EXPORT_VERSION}".encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{name}-{key}.onnx"


CACHE_MB_DEFAULT = 2048
STALE_TMP_S = 3600  # a half-written export this old belongs to a process that died


def cache_limit_bytes() -> int:
    """Cap on the exported graphs kept: KGCLIP_ONNX_CACHE_MB (default 2048; 0 = no cap)."""
    mb = env_int("ONNX_CACHE_MB")
    return (CACHE_MB_DEFAULT if mb is None else mb) * 1024 * 1024


def prune_cache(keep: Path) -> list[Path]:
    """Delete least recently used graphs until the cache fits its cap; never ``keep``.

    Every new set of weights (a fine-tuned checkpoint, a random-init benchmark model) exports a
    graph of up to 250 MB, so without a cap the cache grows without end. A graph is marked used
    (mtime) whenever a process loads it, so the ones in use survive; a pruned one is exported
    again on its next use. Temp files of exports that died are removed too. Returns what went.
    """
    limit = cache_limit_bytes()
    gone: list[Path] = []
    now = time.time()
    entries = []
    for p in keep.parent.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if ".tmp" in p.name:
            if now - st.st_mtime > STALE_TMP_S:
                p.unlink(missing_ok=True)
                gone.append(p)
        elif p.suffix == ".onnx" and p != keep:
            entries.append((st.st_mtime, st.st_size, p))
    if limit <= 0:
        return gone
    total = sum(size for _, size, _ in entries) + (keep.stat().st_size if keep.is_file() else 0)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        gone.append(p)
    if gone:
        log.info("ONNX cache over %d MB: removed %d old graph(s)", limit // 2**20, len(gone))
    return gone


def threads() -> int:
    """Intra-op threads: KGCLIP_THREADS, else the CPUs this process may use."""
    n = env_int("THREADS")
    if n:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def streams() -> int:
    """How many single-threaded runs share a large batch: KGCLIP_ORT_STREAMS, else threads().

    1 keeps one run with ``threads()`` intra-op threads for every batch (the behaviour before
    streams). See :meth:`OrtModel.run`.
    """
    return env_int("ORT_STREAMS") or threads()


STREAM_MIN_ROWS = 4  # a batch is split only when every stream gets at least this many rows


def chunks() -> int:
    """Slices per stream a large batch is cut into: KGCLIP_ORT_CHUNKS, else 2 (see :meth:`OrtModel.run`)."""
    return env_int("ORT_CHUNKS") or 2

_SPIN = [True]


@contextlib.contextmanager
def no_spinning():
    """Sessions created inside run their idle intra-op threads asleep, not spinning.

    Spinning saves about 0.8 ms per query (a lite text query: 5.0 vs 5.9 ms), but during an index
    build the spinning threads take CPU from the decode workers: on 2 cores a lite build ran
    60 img/s with spinning and 70 img/s without (benchmarks/build.py, 500 flickr8k images).
    """
    _SPIN.append(False)
    try:
        yield
    finally:
        _SPIN.pop()


class OrtModel:
    """One ONNX Runtime model; ``run(**inputs)`` returns the first output as numpy.

    Small batches (a query) run once with ``threads()`` intra-op threads. A batch of at least
    ``streams() * STREAM_MIN_ROWS`` rows is cut into contiguous slices that ``streams()`` threads
    run at the same time, each single-threaded, on a second session made on first use (ONNX Runtime
    sessions may be run from several threads at once). An intra-op thread pool waits for its
    slowest thread at every operator: when a build's decode workers take one core for a moment,
    the whole forward stalls; independent single-threaded runs lose only that core's share.
    There are up to ``chunks()`` slices per thread (each of at least ``STREAM_MIN_ROWS`` rows), taken
    in turn as threads come free: a thread slowed by a decode worker takes fewer of them instead of
    holding up the batch (a lite build of 300 flickr8k images on a busy 2-core machine, median of 5-8
    runs: 0.75 of the raw encode rate with 1 slice per thread, 0.82 with 2, 0.80 with 4).
    Rows never interact in these models, so a row's output does not depend on the split.
    """

    def __init__(self, path: Path):
        self.path = path
        self._spin = _SPIN[-1]
        self.session = self._session(threads())
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.streams = streams()
        self._single = None  # the single-threaded session of batch streams, made on first use
        self._pool = None

    def _session(self, n_threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = n_threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if not self._spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])

    def run(self, **inputs: np.ndarray) -> np.ndarray:
        feed = {k: inputs[k] for k in self.inputs}
        rows = len(feed[self.inputs[0]])
        if self.streams < 2 or rows < self.streams * STREAM_MIN_ROWS:
            return self.session.run(None, feed)[0]
        if self._single is None:
            self._single = self._session(1)
            self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="kgclip-ort")
        n = self.streams * max(1, min(chunks(), rows // (self.streams * STREAM_MIN_ROWS)))
        cuts = np.linspace(0, rows, n + 1).astype(int)
        parts = [{k: v[a:b] for k, v in feed.items()} for a, b in zip(cuts[:-1], cuts[1:])]
        outs = list(self._pool.map(lambda part: self._single.run(None, part)[0], parts))
        return np.concatenate(outs, axis=0)


def _preoptimise(path: Path) -> None:
    """Replace the exported graph at ``path`` by ONNX Runtime's optimised form of it (basic and extended
    fusions, which are not tied to one CPU; the layout passes stay at load time).

    A session then loads it without redoing those passes, and its outputs are bit-identical: all-mpnet-
    base-v2's graph loads in 0.72-0.79 s instead of 1.40-1.49 s, MiniLM's in 0.20 s instead of 0.26-0.30
    s, on 2 cores.
    """
    import onnxruntime as ort

    out = path.with_name(path.name + ".opt.tmp")  # a temp name: prune_cache clears it if a process dies
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)


def load_or_export(name: str, signature: str, export: Callable[[str], None],
                   check: Callable[["OrtModel"], float], tolerance: float) -> OrtModel | None:
    """The cached ONNX model for ``name``/``signature``, exporting it first when missing.

    ``export(path)`` writes the graph; ``check(model)`` returns the largest absolute
    difference from the torch tower on a probe input. A fresh export is kept only within
    ``tolerance``. Returns None where ONNX cannot be used (the caller runs torch).
    """
    path = model_path(name, signature)
    if path.is_file():
        try:
            model = OrtModel(path)
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: the last graphs a cap would remove
            return model
        except Exception as e:  # noqa: BLE001 - a damaged cache file: export again
            log.debug("cached %s unusable (%s): exporting again", path, e)
    made: list[OrtModel] = []

    def write(tmp: str) -> None:  # export, optimise and check at the temp path; a failure keeps no file
        export(tmp)
        _preoptimise(Path(tmp))
        model = OrtModel(Path(tmp))
        diff = check(model)
        if not diff <= tolerance:
            raise ValueError(f"ONNX output differs from torch by {diff:.3g} (> {tolerance:g})")
        made.append(model)

    try:
        atomic_write(path, write)
    except Exception as e:  # noqa: BLE001 - an optimisation only, unless the user insisted
        if backend() == "onnx":
            raise ModelError(f"cannot run {name} with ONNX Runtime: {e}") from None
        log.info("ONNX Runtime not used for %s (%s): running torch", name, e)
        return None
    model = made[0]
    model.path = path
    with contextlib.suppress(OSError):
        prune_cache(keep=path)
    return model


def export_module(module, args: tuple, path: str, input_names: list[str], dynamic: dict) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (no onnxscript needed), quietly."""
    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        kw = dict(input_names=input_names, output_names=["out"], dynamic_axes=dynamic, opset_version=17)
        try:
            torch.onnx.export(module, args, path, dynamo=False, **kw)
        except TypeError:  # a torch from before the dynamo exporter: TorchScript is its only one
            torch.onnx.export(module, args, path, **kw)
