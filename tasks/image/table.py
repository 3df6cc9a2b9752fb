"""The per-image table: one row of facts per file, the thing Great Expectations checks.

Built in one pass over the source, in worker processes when that pays, and cached: a
file whose (path, size, mtime) is unchanged since the last run is not read again, and
one whose content hash is known is not decoded again.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from tasks.core.atomic import save_with
from tasks.image.imaging import describe_files, hash_file
from tasks.image.sources import Listing

log = logging.getLogger(__name__)

COLUMNS = [
    "path", "bytes", "mtime_ns", "sha256", "format", "mode", "width", "height", "channels", "bit_depth",
    "fault", "decode_error", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
]  # fmt: skip
INT_COLUMNS = ["bytes", "mtime_ns", "width", "height", "channels", "bit_depth"]
CACHE_VERSION = 1  # bump when describe_file's facts change meaning
PROBE_FILES = 16  # described first, in this process, to time a file before deciding on workers
PARALLEL_MIN_SECONDS = 3.0  # below this much estimated work, starting worker processes costs more than it saves


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _describe(root: Path, relpaths: list[str], max_pixels: int, workers: int) -> list[dict]:
    """describe_file over ``relpaths``; in ``workers`` processes when the work is long enough to pay."""
    start = time.perf_counter()
    rows = describe_files(str(root), relpaths[:PROBE_FILES], max_pixels)
    rest = relpaths[PROBE_FILES:]
    per_file = (time.perf_counter() - start) / max(1, len(rows))
    workers = min(workers or available_cpus(), max(1, len(rest)))
    if workers <= 1 or per_file * len(rest) < PARALLEL_MIN_SECONDS:
        return rows + describe_files(str(root), rest, max_pixels)
    size = max(8, min(256, len(rest) // (workers * 8) + 1))  # small chunks balance slow files across workers
    chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
    done = 0
    try:
        # spawn, not fork: the caller may be a threaded Prefect or MLflow process.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for part in pool.map(describe_files, repeat(str(root)), chunks, repeat(max_pixels)):
                rows += part
                done += 1
    except BrokenProcessPool as err:  # e.g. a worker killed for memory, or a script without a __main__ guard
        log.warning("image-reading workers failed (%s); reading the remaining files in this process", err)
        for chunk in chunks[done:]:
            rows += describe_files(str(root), chunk, max_pixels)
    return rows


def _printable(relpath: str) -> str | None:
    """None when the name holds bytes that are not UTF-8 (kept by Python as surrogates)."""
    try:
        relpath.encode("utf-8")
        return relpath
    except UnicodeEncodeError:
        return None


def _escaped(relpath: str) -> str:
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _link_row(path: Path, relpath: str, fault: str) -> dict:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    what = "points outside the data root" if fault == "link_outside" else "points to nothing (or loops)"
    return {"path": relpath, "fault": fault, "decode_error": f"link to {target} {what}: never opened"}


class TableCache:
    """Facts from the previous run, reusable by file identity or by content hash.

    Identity hits need the same source too: two archives can hold different files with the
    same name, size and mtime. Facts depend on ``max_pixels`` (the bomb guard), so it is part
    of the key.
    """

    def __init__(self, path: Path | None, source: str, max_pixels: int):
        self.path, self.source, self.key = path, source, f"v{CACHE_VERSION}:{max_pixels}"
        self.by_identity: dict[tuple, dict] = {}
        self.by_hash: dict[str, dict] = {}
        if path is None or not path.exists():
            return
        try:
            cached = pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - a damaged cache only costs time
            log.warning("ignoring the validation cache %s: %s", path, err)
            return
        cached = cached[(cached["cache_key"] == self.key) & cached["sha256"].notna()]
        for row in cached.to_dict("records"):
            facts = {k: v for k, v in row.items() if k in COLUMNS}
            self.by_hash.setdefault(row["sha256"], facts)
            if row["source"] == source:
                self.by_identity[(row["path"], int(row["bytes"]), int(row["mtime_ns"]))] = facts

    def save(self, table: pd.DataFrame) -> None:
        if self.path is None:
            return
        rows = table[table["sha256"].notna()].assign(source=self.source, cache_key=self.key)
        save_with(self.path, lambda tmp: rows.to_parquet(tmp, index=False))


def build_table(root: Path, listing: Listing, max_pixels: int, cache: TableCache | None = None, workers: int = 0) -> pd.DataFrame:
    """One row per listed file, sorted by path; never raises for a bad file."""
    cache = cache or TableCache(None, "", max_pixels)
    rows = [_link_row(p, _escaped(p.relative_to(root).as_posix()), "link_outside") for p in listing.links_outside]
    rows += [_link_row(p, _escaped(p.relative_to(root).as_posix()), "broken_link") for p in listing.broken_links]
    rows += [{"path": _escaped(m.name), "fault": m.fault, "decode_error": m.reason} for m in listing.refused]
    misses, hits = [], 0
    for path in listing.files:
        relpath = path.relative_to(root).as_posix()
        if _printable(relpath) is None:
            # The table, the reports and ingest all name files by text; such a name cannot round-trip.
            message = "the file name is not valid UTF-8: rename the file"
            rows.append({"path": _escaped(relpath), "fault": "bad_filename", "decode_error": message})
            continue
        try:
            info = path.stat()
            hit = cache.by_identity.get((relpath, info.st_size, info.st_mtime_ns))
        except OSError:
            hit = None
        if hit:
            rows.append(hit)
            hits += 1
        else:
            misses.append(relpath)
    if misses and cache.by_hash:
        # Touched or copied files: hashing is cheap next to decoding, so look the content up.
        still = []
        for relpath in misses:
            row = _identity(root / relpath, relpath)
            known = cache.by_hash.get(row.get("sha256"))
            if known:
                rows.append(known | row)
                hits += 1
            else:
                still.append(relpath)
        misses = still
    log.info("%d files known from the cache; reading %d", hits, len(misses))
    rows += _describe(root, misses, max_pixels, workers)
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("path", kind="stable", ignore_index=True)
    # Nullable integers: a float column would round nanosecond mtimes and print sizes as "32.0".
    table = table.astype(dict.fromkeys(INT_COLUMNS, "Int64"))
    cache.save(table)
    return table


def _identity(path: Path, relpath: str) -> dict:
    """Path, size, mtime and content hash only (no decoding)."""
    try:
        info = path.stat()
        sha256, size, _, _ = hash_file(path)
    except OSError:
        return {"path": relpath}
    return {"path": relpath, "bytes": size, "mtime_ns": info.st_mtime_ns, "sha256": sha256 if size else None}
