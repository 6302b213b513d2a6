"""One training process per run dir, and run dir names that stay inside outputs/ and within name limits."""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
from pathlib import Path
from types import TracebackType

from neuralode.errors import RunDirBusy

LOCK_NAME = ".lock"
# Most file systems cap one name at 255 bytes; longer override lists keep a readable head and a hash.
MAX_NAME_BYTES = 200


class RunDirLock:
    """An exclusive ``flock`` on ``<run dir>/.lock`` for as long as a run trains into the dir.

    The kernel drops the lock when its process ends, however it ends, so a lock left by a killed run is free
    for the next one; the file itself only records the holder's pid for the message. A run that ends removes
    the file (while still holding it), so a finished or refused run leaves no ``.lock`` behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent} is in use by another training process (pid {holder}); wait "
                                  "for it to finish, stop it, or train into another hydra.run.dir") from None
            if _names(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file between our open and our lock: lock the file now at the path
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before the lock is released: no one can hold the removed file
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def safe_name(name: str) -> str:
    """``name`` as one path component: separators and a leading dot replaced, too long names shortened with a
    hash of the whole, so ``task.name=../../x`` cannot leave outputs/ and 16 overrides still make a valid name."""
    cleaned = re.sub(r"[/\\\0]", "_", name)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if len(cleaned.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha1(cleaned.encode()).hexdigest()[:12]
        cleaned = cleaned.encode()[:MAX_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest
    return cleaned or "_"
