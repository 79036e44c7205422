"""Files written whole or not at all, with the permissions every other file of the user gets.

Every output and cache file goes through :func:`atomic_path`: the content is written to a
temporary file in the same folder and moved into place in one step, so a crash, a full disk or
Ctrl-C never leaves half a file; the temporary file is removed on any failure. ``mkstemp`` makes
files owner-only (0600); the finished file follows the umask instead, so colleagues on a shared
server can read feature tables, reports and audits as they read anything else the user writes.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_atomic", "umask"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import (single-threaded): os.umask is process-wide


def umask() -> int:
    """The process's umask (as it was when radiodeep was imported)."""
    return _UMASK


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, the file there
    becomes ``path`` (mode ``0o666 & ~umask``), else it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; return ``path``."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return Path(path)
