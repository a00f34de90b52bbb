"""A lock on a run folder, so that two trainers never write the same checkpoints.

The lock is ``train.lock`` in the folder, holding ``PID HOST`` of its owner for people to
read; the exclusion itself is an advisory ``flock`` on that file, which the kernel drops
when the owner dies, however it dies. A lock file left by a dead process is therefore taken
over by the next trainer without any guessing about PIDs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, the folder is not locked
    fcntl = None

LOCK_NAME = "train.lock"


class RunLockedError(OSError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """``with RunLock(folder):`` holds ``folder/train.lock`` (the folder is created).

    The lock lives as long as the object holds its open file: keep a reference while it
    must be held (a discarded object's file is closed by the garbage collector).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming its holder."""
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunLockedError(
                    f"{self.path.parent} is in use by a running trainer ({holder}, "
                    f"see {self.path}); "
                    "wait for it to finish or pick another --name / --save-dir"
                ) from None
            # The holder may have released and deleted the file between our open and flock:
            # then we locked a file nobody else will see; start again on the new one.
            if _same_file(handle, self.path):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Delete the lock file and drop the lock (no-op when not held)."""
        if self._file is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then re-checks the path
        self._file.close()
        self._file = None


def _same_file(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
