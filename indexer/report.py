"""What a build or update did: :class:`BuildReport` (counts, skip reasons, stage timings), its JSON
form and its summary lines; :class:`SkipLog`, the ``skipping PATH: REASON`` lines (a few per reason,
then counts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from retrieval.text import safe_text

SKIPS_PER_REASON = 5  # skipped files listed one by one per kind of reason; the rest are counted
SKIPS_LISTED = 50  # and at most this many listed in all (reasons can vary a lot)


def reason_kind(reason: str) -> str:
    """A failure reason without its file-specific details, for summaries."""
    return reason.split(" (")[0].split(":")[0]


@dataclass
class Timings:
    model_load: float = 0.0
    scan: float = 0.0
    decode_wait: float = 0.0  # main process waiting for decoded images (not overlapped)
    decode_cpu: float = 0.0  # summed over workers
    encode: float = 0.0
    caption_encode: float = 0.0
    write: float = 0.0
    sweep: float = 0.0
    faiss: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class BuildReport:
    """What a build or update did. ``to_dict()`` for JSON."""

    index_dir: str
    added: int = 0  # new items (encoded)
    duplicates: int = 0  # new paths whose content was already indexed (kept as aliases)
    changed: int = 0  # known paths re-read because size/mtime/captions changed
    unchanged: int = 0
    removed: int = 0  # paths whose files are gone (removed with --prune)
    missing: int = 0  # paths whose files are gone, kept (no --prune)
    kept: int = 0  # paths not seen under a missing, empty or unreadable source or folder, kept
    failed: int = 0  # skipped in this run
    batches: int = 0
    items: int = 0
    paths: int = 0
    captions: int = 0
    failures_total: int = 0
    failure_reasons: dict = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    decode_restarts: int = 0
    workers: int = 0
    batch_size: int = 0
    interrupted: bool = False
    faiss: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["timings"] = self.timings.to_dict()
        d["items_per_s"] = round(self.encoded_per_s, 2)
        return d

    @property
    def encoded_per_s(self) -> float:
        t = self.timings.total
        return (self.added + self.duplicates + self.changed) / t if t > 0 else 0.0

    def summary(self) -> str:
        t = self.timings
        lines = [
            f"indexed {self.items} items ({self.paths} paths, {self.captions} captions) in {t.total:.1f} s: "
            f"{self.added} new, {self.duplicates} duplicates, {self.changed} changed, {self.unchanged} unchanged, "
            f"{self.removed} removed, {self.failed} skipped",
            f"timings: model load {t.model_load:.1f}s, scan {t.scan:.1f}s, decode wait {t.decode_wait:.1f}s (worker cpu {t.decode_cpu:.1f}s), "
            f"encode {t.encode:.1f}s, captions {t.caption_encode:.1f}s, write {t.write:.1f}s, faiss {t.faiss:.1f}s",
        ]
        if self.failure_reasons:
            top = sorted(self.failure_reasons.items(), key=lambda kv: -kv[1])[:8]
            lines.append(safe_text(f"{self.failures_total} files skipped in all: "
                                   + "; ".join(f"{n} x {r}" for r, n in top)))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"BuildReport(items={self.items}, added={self.added}, duplicates={self.duplicates}, "
                f"changed={self.changed}, removed={self.removed}, failed={self.failed})")


class SkipLog:
    """Counts each skipped file in ``report`` (``failed``, ``failure_reasons`` by :func:`reason_kind`)
    and says ``skipping PATH: REASON`` for the first :data:`SKIPS_PER_REASON` of each kind (at most
    :data:`SKIPS_LISTED` in all), then one line that the rest of that kind are only counted: a tar of
    200k non-image members writes a few lines, not 40 MB. The summary at the end gives the counts per
    reason; every skipped file stays in the index's failure table (``kgclip info``)."""

    def __init__(self, report: BuildReport, say: Callable[[str], None]):
        self.report, self.say, self.listed = report, say, 0

    def __call__(self, key: str, reason: str) -> None:
        r = self.report
        kind = reason_kind(reason)
        n = r.failure_reasons[kind] = r.failure_reasons.get(kind, 0) + 1
        r.failed += 1
        if n <= SKIPS_PER_REASON and self.listed < SKIPS_LISTED:
            self.listed += 1
            self.say(safe_text(f"skipping {key}: {reason}"))  # names and reasons from sources: escaped
        elif n == SKIPS_PER_REASON + 1 or (n <= SKIPS_PER_REASON and self.listed == SKIPS_LISTED):
            self.listed += n <= SKIPS_PER_REASON
            self.say(safe_text(f"(more files skipped as {kind!r}: counted, not listed; the summary "
                               "gives the counts)"))
