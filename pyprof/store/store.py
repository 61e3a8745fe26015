"""The local store: one pprof file per JVM per window, and a SQLite index of them.

Layout of a store directory (0700, files 0600, all owned by the daemon's user: profiles hold the
profiled services' code and thread names):

    DIR/index.sqlite                      the index (SQLite, WAL): one row per window
    DIR/.lock                             flock()ed by the one writer (the daemon)
    DIR/windows/YYYY-MM-DD/<from_ms>-<pid>-<rand>.pb.gz

Crash safety: a window file is written to a dot-named temp file, fsynced and renamed (a `kill -9`
leaves the old state or the complete file, never a partial one), and only then indexed. Each window's
labels are also inside its pprof (comments `pyprof.window.NAME=VALUE`), so a file whose row was lost
is re-indexed from the file itself. A writer's open() repairs: leftover temp files are removed, rows
whose file is gone are deleted, files without a row are indexed (or removed when unreadable); each
repair is counted in RepairReport.

Retention deletes the oldest windows first (by end time), by age and by total size.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from pyprof.errors import PermissionDenied, UsageError
from pyprof.model import ProfileData
from pyprof.output import write_atomically
from pyprof.store.labels import LABEL_NAMES, WindowLabels

INDEX_NAME = "index.sqlite"
LOCK_NAME = ".lock"
WINDOWS_DIR = "windows"
SUFFIX = ".pb.gz"
LABEL_COMMENT = "pyprof.window."
SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,          -- relative to the store directory
    service TEXT NOT NULL,
    pid INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    jdk TEXT NOT NULL,
    host TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    events TEXT NOT NULL DEFAULT 'cpu'  -- the window's events, comma-separated (daemon -e), first the default
);
CREATE INDEX IF NOT EXISTS windows_service_time ON windows (service, start_ns);
CREATE INDEX IF NOT EXISTS windows_end ON windows (end_ns);
CREATE TABLE IF NOT EXISTS deliveries (
    backend TEXT PRIMARY KEY,           -- "pyroscope", "otlp"
    settled_id INTEGER NOT NULL         -- windows up to this id were sent, rejected or dropped
);
"""
_COLUMNS = "id, path, service, pid, container_id, jdk, host, start_ns, end_ns, samples, bytes, events"
# An index written before windows had events lacks the column: a writer adds it (every old row a cpu
# window), a reader selects the default in its place.
_EVENTS_COLUMN = "ALTER TABLE windows ADD COLUMN events TEXT NOT NULL DEFAULT 'cpu'"


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b", re.IGNORECASE)   # the B is required: 10m is minutes


@dataclass(frozen=True)
class Retention:
    """What the store keeps: None means no limit on that axis."""

    max_bytes: Optional[int] = None
    max_age_s: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> Retention:
        """`--retention`: a size, an age, or both, comma-separated: `5GiB`, `7d`, `2GB,12h`, `500MiB,1d`.
        Sizes end in B: B, KB/KiB, MB/MiB, GB/GiB, TB/TiB (powers of 1024 with or without the i: a
        store's bound, not a disk vendor's); ages are the durations of `report --since` (`30m`, `12h`,
        `7d`), so `10m` is ten minutes."""
        from pyprof.store.timespec import parse_duration

        max_bytes: Optional[int] = None
        max_age_s: Optional[float] = None
        for item in (part.strip() for part in text.split(",")):
            size = _SIZE.fullmatch(item)
            if size is not None:
                max_bytes = int(float(size.group(1)) * 1024 ** " kmgt".index(size.group(2).lower() or " "))
            elif item.endswith("M"):
                raise UsageError(f"invalid --retention {text!r}: {item!r} is ambiguous: write "
                                 f"{item}iB for a size or {item[:-1]}m for minutes")
            elif item:
                try:
                    max_age_s = parse_duration(item)
                except UsageError:
                    raise UsageError(f"invalid --retention {text!r}: expected a size (5GiB), an age (7d) "
                                     "or both (5GiB,7d)") from None
        if max_bytes == 0 or max_age_s == 0:
            raise UsageError(f"invalid --retention {text!r}: a bound of 0 would keep nothing")
        return cls(max_bytes, max_age_s)


@dataclass(frozen=True)
class StoredWindow:
    """One row of the index."""

    id: int
    path: str            # relative to the store directory
    labels: WindowLabels
    start_ns: int
    end_ns: int
    samples: int
    bytes: int
    events: tuple[str, ...] = ("cpu",)   # the window's events (its sample types' pairs), first the default

    def to_json(self, directory: Path) -> dict:
        return {"service": self.labels.service_name, "pid": self.labels.pid,
                "container_id": self.labels.container_id, "jdk": self.labels.jdk, "host": self.labels.host,
                "from": _iso(self.start_ns), "until": _iso(self.end_ns), "from_ns": self.start_ns,
                "until_ns": self.end_ns, "samples": self.samples, "bytes": self.bytes,
                "events": list(self.events),
                "path": str(directory / self.path)}


@dataclass
class RepairReport:
    """What open() found broken and fixed (each one a count, never silent)."""

    temp_files_removed: int = 0
    rows_without_file: int = 0
    files_indexed: int = 0
    broken_files_removed: int = 0

    @property
    def total(self) -> int:
        return (self.temp_files_removed + self.rows_without_file + self.files_indexed
                + self.broken_files_removed)


@dataclass
class StoreCounters:
    windows_written: int = 0
    windows_expired: int = 0     # deleted by retention
    bytes_written: int = 0
    repair: RepairReport = field(default_factory=RepairReport)


class Store:
    """A store directory. Thread-safe (the daemon's writer and its exporters share one)."""

    def __init__(self, directory: Path, db: sqlite3.Connection, retention: Retention, writable: bool,
                 lock_fd: Optional[int]) -> None:
        self.directory = directory
        self._db = db
        self.retention = retention
        self.writable = writable
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self.counters = StoreCounters()
        self._has_events = _has_column(db, "events")

    # ---- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Union[str, os.PathLike], retention: Retention = Retention()) -> Store:
        """Open (create) DIR for writing: one writer at a time; repairs what a crash left."""
        path = Path(directory)
        _prepare_directory(path)
        lock_fd = _take_lock(path)
        try:
            db = _connect(path / INDEX_NAME, create=True)
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(path, db, retention, True, lock_fd)
        store.counters.repair = store._repair()
        return store

    @classmethod
    def open_readonly(cls, directory: Union[str, os.PathLike]) -> Store:
        """Open DIR to query it (`store ls`, `report DIR`), also while a daemon writes it."""
        path = Path(directory)
        if not (path / INDEX_NAME).is_file():
            raise UsageError(f"{path} is not a pyprof store (no {INDEX_NAME})")
        return cls(path, _connect(path / INDEX_NAME, create=False), Retention(), False, None)

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------------
    def write_window(self, window: Union[ProfileData, Sequence[ProfileData]],
                     labels: WindowLabels) -> StoredWindow:
        """Write one window (atomically), index it, then apply retention. Returns its row.

        A window of several events (one profile each, `daemon -e cpu,alloc`) is one pprof with every
        event's sample types, the first event's the default (pyprof.output.pprof.encode_events); its
        row's `samples` are the first event's."""
        from pyprof.output import pprof

        if not self.writable:
            raise UsageError(f"{self.directory} is open read-only")
        profiles = [window] if isinstance(window, ProfileData) else list(window)
        profile = profiles[0]
        start_ns = profile.start_time_ns or time.time_ns()
        end_ns = start_ns + max(profile.duration_ns, 0)
        # the writer takes the comments of the first profile: the labels go there
        labelled = [replace(profile, comments=[*profile.comments, *label_comments(labels)]), *profiles[1:]]
        data = pprof.encode_events(labelled)
        relative = self._new_relative_path(start_ns, labels.pid)
        _write_private_atomically(self.directory / relative, data)
        window = self._index(relative, labels, start_ns, end_ns, profile.total_samples, len(data),
                             tuple(p.event for p in profiles))
        self.counters.windows_written += 1
        self.counters.bytes_written += len(data)
        self.apply_retention()
        return window

    def _new_relative_path(self, start_ns: int, pid: int) -> str:
        day = datetime.fromtimestamp(start_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d")
        day_dir = self.directory / WINDOWS_DIR / day
        if not day_dir.is_dir():
            _make_private_dir(day_dir)
        return f"{WINDOWS_DIR}/{day}/{start_ns // 1_000_000}-{pid}-{secrets.token_hex(3)}{SUFFIX}"

    def _index(self, relative: str, labels: WindowLabels, start_ns: int, end_ns: int, samples: int,
               size: int, events: tuple[str, ...] = ("cpu",)) -> StoredWindow:
        with self._mutex, self._db:
            # ON CONFLICT: a reader's repair never runs, but a writer restarted after a crash may find
            # the same file again; the row is then made right rather than duplicated.
            cursor = self._db.execute(
                "INSERT INTO windows (path, service, pid, container_id, jdk, host, start_ns, end_ns, "
                "samples, bytes, events) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(path) DO UPDATE SET "
                "service=excluded.service, pid=excluded.pid, container_id=excluded.container_id, "
                "jdk=excluded.jdk, host=excluded.host, start_ns=excluded.start_ns, end_ns=excluded.end_ns, "
                "samples=excluded.samples, bytes=excluded.bytes, events=excluded.events RETURNING id",
                (relative, labels.service_name, labels.pid, labels.container_id, labels.jdk, labels.host,
                 start_ns, end_ns, samples, size, ",".join(events)))
            row_id = cursor.fetchone()[0]
        return StoredWindow(row_id, relative, labels, start_ns, end_ns, samples, size, events)

    # ---- retention -------------------------------------------------------------------------------
    def apply_retention(self, now_ns: Optional[int] = None) -> int:
        """Delete the oldest windows until the store is within its age and size bounds; how many."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        doomed: list[StoredWindow] = []
        with self._mutex:
            if self.retention.max_age_s is not None:
                cutoff = now_ns - int(self.retention.max_age_s * 1e9)
                doomed += self._select("WHERE end_ns < ? ORDER BY end_ns", (cutoff,))
            if self.retention.max_bytes is not None:
                doomed += self._over_size(self.retention.max_bytes, {w.id for w in doomed})
        for window in doomed:
            self.delete(window)
        self.counters.windows_expired += len(doomed)
        return len(doomed)

    def _over_size(self, max_bytes: int, already: set[int]) -> list[StoredWindow]:
        """The oldest windows (not already doomed) whose removal brings the total under max_bytes."""
        total = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM windows").fetchone()[0]
        out: list[StoredWindow] = []
        if total <= max_bytes:
            return out          # the common case: one aggregate query per write, no row read
        for window in self._select("ORDER BY end_ns, id", ()):
            if total <= max_bytes:
                break
            total -= window.bytes
            if window.id not in already:
                out.append(window)
        return out

    def delete(self, window: StoredWindow) -> None:
        """The file first, then the row: a crash in between leaves a row without a file, which the
        next open() removes; the other order could leave an unindexed file nobody deletes."""
        try:
            os.unlink(self.directory / window.path)
        except FileNotFoundError:
            pass
        with self._mutex, self._db:
            self._db.execute("DELETE FROM windows WHERE id = ?", (window.id,))
        _remove_empty_day(self.directory / window.path)

    # ---- queries ---------------------------------------------------------------------------------
    def query(self, service: Optional[str] = None, pid: Optional[int] = None, since_ns: Optional[int] = None,
              until_ns: Optional[int] = None) -> list[StoredWindow]:
        """Windows that overlap [since, until) and match service/pid, oldest first (the index only)."""
        where, args = [], []
        if service is not None:
            where.append("service = ?")
            args.append(service)
        if pid is not None:
            where.append("pid = ?")
            args.append(pid)
        if since_ns is not None:
            where.append("end_ns > ?")
            args.append(since_ns)
        if until_ns is not None:
            where.append("start_ns < ?")
            args.append(until_ns)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._mutex:
            return self._select(f"{clause} ORDER BY start_ns, id", tuple(args))

    # ---- delivery marks: what a backend has been given, kept across restarts ---------------------
    def undelivered(self, backend: str, limit: int = 10_000) -> list[StoredWindow]:
        """Windows written after the last one `backend` settled, oldest first: what a restarted daemon
        queues again. A backend never seen starts from now (nothing old is pushed)."""
        with self._mutex:
            row = self._db.execute("SELECT settled_id FROM deliveries WHERE backend = ?",
                                   (backend,)).fetchone()
            if row is None:
                return []
            return self._select("WHERE id > ? ORDER BY id LIMIT ?", (row[0], limit))

    def mark_settled(self, backend: str, window_id: int) -> None:
        """`backend` is done with every window up to `window_id` (delivery is in order)."""
        with self._mutex, self._db:
            self._db.execute("INSERT INTO deliveries (backend, settled_id) VALUES (?, ?) "
                             "ON CONFLICT(backend) DO UPDATE SET "
                             "settled_id = MAX(settled_id, excluded.settled_id)",
                             (backend, window_id))

    def start_delivery(self, backend: str) -> None:
        """Record that `backend` receives windows from now on (its mark: the newest window now)."""
        with self._mutex, self._db:
            newest = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM windows").fetchone()[0]
            self._db.execute("INSERT OR IGNORE INTO deliveries (backend, settled_id) VALUES (?, ?)",
                             (backend, newest))

    def services(self) -> list[str]:
        with self._mutex:
            return [row[0] for row in self._db.execute("SELECT DISTINCT service FROM windows ORDER BY 1")]

    def total_bytes(self) -> int:
        with self._mutex:
            return self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM windows").fetchone()[0]

    def read_bytes(self, window: StoredWindow) -> bytes:
        try:
            with open(self.directory / window.path, "rb") as f:
                return f.read()
        except OSError as e:
            raise UsageError(f"cannot read window {window.path}: {e.strerror}") from e

    def read(self, window: StoredWindow, sample_type: Optional[str] = None) -> ProfileData:
        """The window's profile, without the store's own label comments; `sample_type` picks one of a
        window's several events' types (`alloc_space`, `delay`: pyprof.output.pprof.read_pprof)."""
        from pyprof.output.pprof import read_pprof

        profile = read_pprof(self.read_bytes(window), sample_type)
        profile.comments = [c for c in profile.comments if not c.startswith(LABEL_COMMENT)]
        return profile

    def _select(self, clause: str, args: tuple) -> list[StoredWindow]:
        return list(self._iter_select(clause, args))

    def _iter_select(self, clause: str, args: tuple) -> Iterator[StoredWindow]:
        columns = _COLUMNS if self._has_events else _COLUMNS.replace("events", "'cpu'")
        for row in self._db.execute(f"SELECT {columns} FROM windows {clause}", args):
            row_id, path, service, pid, container, jdk, host, start, end, samples, size, events = row
            yield StoredWindow(row_id, path, WindowLabels(service, pid, container, jdk, host), start, end,
                               samples, size, tuple(events.split(",")) if events else ("cpu",))

    # ---- repair ----------------------------------------------------------------------------------
    def _repair(self) -> RepairReport:
        report = RepairReport()
        on_disk: set[str] = set()
        for file in _window_files(self.directory / WINDOWS_DIR):
            if file.name.startswith("."):
                _unlink_quietly(file)          # a temp file a crash left: never a complete window
                report.temp_files_removed += 1
            elif file.name.endswith(SUFFIX):
                on_disk.add(file.relative_to(self.directory).as_posix())
        with self._mutex:
            indexed = {row[0]: row[1] for row in self._db.execute("SELECT path, id FROM windows")}
            gone = [row_id for path, row_id in indexed.items() if path not in on_disk]
            with self._db:
                self._db.executemany("DELETE FROM windows WHERE id = ?", [(i,) for i in gone])
        report.rows_without_file = len(gone)
        for relative in sorted(on_disk - indexed.keys()):
            if self._reindex(relative):
                report.files_indexed += 1
            else:
                _unlink_quietly(self.directory / relative)
                report.broken_files_removed += 1
        return report

    def _reindex(self, relative: str) -> bool:
        """Index a window file from its own content; False when it is not a readable pyprof window."""
        from pyprof.output.pprof import read_events, read_pprof

        try:
            data = (self.directory / relative).read_bytes()
            profile = read_pprof(data)
            events = tuple(p.event for p in read_events(data))
        except (OSError, UsageError):
            return False
        labels = labels_from_comments(profile.comments)
        if labels is None:
            return False
        self._index(relative, labels, profile.start_time_ns, profile.start_time_ns + profile.duration_ns,
                    profile.total_samples, len(data), events)
        return True


# ---- labels inside the pprof -------------------------------------------------------------------------

def label_comments(labels: WindowLabels) -> list[str]:
    return [f"{LABEL_COMMENT}{name}={value}" for name, value in labels.items()]


def labels_from_comments(comments: list[str]) -> Optional[WindowLabels]:
    values: dict[str, str] = {}
    for comment in comments:
        if comment.startswith(LABEL_COMMENT):
            name, _, value = comment[len(LABEL_COMMENT):].partition("=")
            if name in LABEL_NAMES:
                values[name] = value
    if "service_name" not in values or not values.get("pid", "").isdigit():
        return None
    return WindowLabels(values["service_name"], int(values["pid"]), values.get("container_id", ""),
                        values.get("jdk", ""), values.get("host", ""))


# ---- files and permissions ---------------------------------------------------------------------------

def _prepare_directory(path: Path) -> None:
    """DIR exists, is a real directory (not a symlink), ours, and 0700."""
    if not path.exists() and not path.is_symlink():
        _make_private_dir(path)
    _check_private_dir(path)
    windows = path / WINDOWS_DIR
    if not windows.exists() and not windows.is_symlink():
        _make_private_dir(windows)
    _check_private_dir(windows)


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700, follow_symlinks=False)   # mkdir's mode is reduced by the umask only
    except OSError as e:
        raise UsageError(f"cannot create store directory {path}: {e.strerror}") from e


def _check_private_dir(path: Path) -> None:
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UsageError(f"cannot use store directory {path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"store directory {path} is not a directory (a symlink is refused)")
    if st.st_uid != os.geteuid():
        raise PermissionDenied(f"store directory {path} belongs to uid {st.st_uid}, not to this user "
                               f"(uid {os.geteuid()}): refusing to write profiles there")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _take_lock(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"store {path} is in use by another writer (a running pyprof daemon?)") from None
    return fd


def _connect(index: Path, create: bool) -> sqlite3.Connection:
    if create and not index.exists():
        # Created here so that it is 0600 whatever the umask; SQLite gives its -wal/-shm the same mode.
        os.close(os.open(index, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    try:
        db = sqlite3.connect(str(index), timeout=10.0, isolation_level="DEFERRED", check_same_thread=False)
        if create:
            db.execute("PRAGMA journal_mode=WAL")   # readers (`store ls`) never block the daemon
            db.executescript(SCHEMA)
            if not _has_column(db, "events"):
                db.execute(_EVENTS_COLUMN)
        db.execute("PRAGMA synchronous=NORMAL")
        return db
    except sqlite3.DatabaseError as e:
        raise UsageError(f"cannot open store index {index}: {e}") from e


def _has_column(db: sqlite3.Connection, name: str) -> bool:
    return any(row[1] == name for row in db.execute("PRAGMA table_info(windows)"))


def _write_private_atomically(path: Path, data: bytes) -> None:
    """Temp file (0600, O_EXCL, dot name) in the same directory, fsync, rename, fsync the directory."""
    write_atomically(str(path), data, mode=0o600)


def _window_files(windows: Path) -> Iterator[Path]:
    """Files one level of day directories down; nothing else is walked (no symlink is followed)."""
    try:
        days = list(os.scandir(windows))
    except OSError:
        return
    for day in days:
        if not day.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(day.path))
        except OSError:
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                yield Path(entry.path)


def _remove_empty_day(window_path: Path) -> None:
    try:
        window_path.parent.rmdir()   # fails (and that is fine) while the day still has windows
    except OSError:
        pass


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _iso(ns: int) -> str:
    from pyprof.store.timespec import format_time

    return format_time(ns)
