"""The server's journal: every accepted job, its state, its uploads and its results, in SQLite.

A job is written here before ``POST /v1/jobs`` answers 202, and every change of state
(started, finished, error, cancelled, interrupted) is written when it happens, so a server
killed with ``kill -9`` starts again from the journal: queued jobs run in their order (per client: the ``client``
column, ``X-Ctrlgen-Client``; a journal without it is migrated, its jobs anonymous), the
job that was running runs again first (once; a job that was running at two crashes in a row
ends ``interrupted``, so one job that kills the server cannot keep it down), and finished
results are still there (the pixels are files by hash, see :mod:`.files`).

SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives the process dying at any
point; a power cut may lose the last commits (as SQLite documents for that setting). One
connection, used under a lock from the event loop's thread and the worker's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    preview INTEGER NOT NULL DEFAULT 0,
    refs TEXT NOT NULL DEFAULT '[]',
    runs INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    results TEXT,
    purged INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    client TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS uploads (
    digest TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    created REAL NOT NULL
);
"""

RUNS_BEFORE_INTERRUPTED = 2
"""A job found ``running`` after a crash runs again unless it had already started this often."""


@dataclass
class JobRow:
    id: str
    seq: int
    created: float
    started: float | None
    ended: float | None
    status: str
    job: dict[str, Any]
    preview: bool
    refs: list[str]
    runs: int
    error: dict | None
    results: list[dict] | None
    purged: bool
    client: str | None = None  # the X-Ctrlgen-Client it came from (None: anonymous)


@dataclass
class UploadRow:
    digest: str
    format: str  # "raw", "png" or "webp": how the file on disk is to be read
    width: int
    height: int
    channels: int
    nbytes: int
    created: float


class Journal:
    """Jobs and uploads the server has acknowledged, in ``folder/journal.sqlite3``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "journal.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "client" not in columns:  # a journal from before per-client queues: its jobs are anonymous
            self._db.execute("ALTER TABLE jobs ADD COLUMN client TEXT")
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()
        self._seq = int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # -- jobs ---------------------------------------------------------------------------
    def add_job(self, job_id: str, job: dict[str, Any], preview: bool, refs: list[str], created: float,
                idempotency_key: str | None = None, client: str | None = None) -> None:
        with self._lock:
            self._seq += 1
            self._db.execute(
                "INSERT INTO jobs (id, seq, created, status, job, preview, refs, idempotency_key, client) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, self._seq, created, json.dumps(job), int(preview), json.dumps(refs), idempotency_key,
                 client))

    def job_with_key(self, idempotency_key: str) -> str | None:
        """The id of the job submitted with this ``Idempotency-Key``, if any."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        return row[0] if row else None

    def job_started(self, job_id: str, when: float) -> None:
        self._write("UPDATE jobs SET status = 'running', started = ?, runs = runs + 1 WHERE id = ?", (when, job_id))

    def job_ended(self, job_id: str, status: str, when: float, *, error: dict | None = None,
                  results: list[dict] | None = None) -> None:
        self._write("UPDATE jobs SET status = ?, ended = ?, error = ?, results = ? WHERE id = ?",
                    (status, when, json.dumps(error) if error is not None else None,
                     json.dumps(results) if results is not None else None, job_id))

    def job_requeued(self, job_id: str) -> None:
        self._write("UPDATE jobs SET status = 'queued', started = NULL WHERE id = ?", (job_id,))

    def job_purged(self, job_id: str) -> None:
        """Its results were dropped (TTL or count): answer 410 for it from now on."""
        self._write("UPDATE jobs SET purged = 1, results = NULL WHERE id = ?", (job_id,))

    def forget_purged(self, keep: int) -> None:
        """Keep the ids of at most ``keep`` purged jobs (for their 410 answers)."""
        self._write("DELETE FROM jobs WHERE purged = 1 AND seq NOT IN "
                    "(SELECT seq FROM jobs WHERE purged = 1 ORDER BY seq DESC LIMIT ?)", (keep,))

    def jobs(self) -> list[JobRow]:
        """Every job the journal knows, in submission order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, seq, created, started, ended, status, job, preview, refs, runs, error, results, purged, "
                "client FROM jobs ORDER BY seq").fetchall()
        return [JobRow(id=r[0], seq=r[1], created=r[2], started=r[3], ended=r[4], status=r[5], job=json.loads(r[6]),
                       preview=bool(r[7]), refs=json.loads(r[8]), runs=r[9],
                       error=json.loads(r[10]) if r[10] else None, results=json.loads(r[11]) if r[11] else None,
                       purged=bool(r[12]), client=r[13]) for r in rows]

    def referenced_uploads(self) -> set[str]:
        """Digests that queued or running jobs still need."""
        with self._lock:
            rows = self._db.execute("SELECT refs FROM jobs WHERE status IN ('queued', 'running')").fetchall()
        return {digest for (refs,) in rows for digest in json.loads(refs)}

    def referenced_results(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT results FROM jobs WHERE results IS NOT NULL").fetchall()
        return {item["digest"] for (results,) in rows for item in json.loads(results)}

    # -- uploads ------------------------------------------------------------------------
    def add_upload(self, row: UploadRow) -> None:
        self._write("INSERT OR REPLACE INTO uploads (digest, format, width, height, channels, nbytes, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.digest, row.format, row.width, row.height, row.channels, row.nbytes, row.created))

    def upload(self, digest: str) -> UploadRow | None:
        with self._lock:
            row = self._db.execute("SELECT digest, format, width, height, channels, nbytes, created FROM uploads "
                                   "WHERE digest = ?", (digest,)).fetchone()
        return UploadRow(*row) if row else None

    def uploads(self) -> list[UploadRow]:
        with self._lock:
            rows = self._db.execute("SELECT digest, format, width, height, channels, nbytes, created FROM uploads "
                                    "ORDER BY created").fetchall()
        return [UploadRow(*row) for row in rows]

    def forget_upload(self, digest: str) -> None:
        self._write("DELETE FROM uploads WHERE digest = ?", (digest,))
