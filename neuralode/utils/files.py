"""The one way the package writes files atomically and reads its JSON and JSON-lines files."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write`` into a temporary file, then rename it over ``path``: a kill at any moment leaves
    the old or the new file, never half of one; the data and the rename are flushed to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk: name the file (a failed write names none), and free the partial copy
        tmp.unlink(missing_ok=True)
        raise named_os_error(e, path) from e
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def named_os_error(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file name, kept when it has one already."""
    return error if error.filename else OSError(error.errno, error.strerror or str(error), str(path))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; None if the file is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; a line cut short by a kill mid-write, or anything that is
    not an object, is skipped. [] if the file is missing."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
