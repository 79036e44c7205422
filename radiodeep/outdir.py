"""The output folder of a run: writability, one run at a time, outputs that belong together.

* :func:`check_writable` creates the folder and writes a probe under a unique name, so two
  processes probing one folder at once never disturb each other.
* :class:`OutputLock` holds ``.radiodeep.lock`` (PID, host, start time) for the whole run;
  a second run on the same folder is refused with the first one's PID and start time. A
  lock left by a run that died (no process holds it any more) is taken over.
* :func:`remove_stale_evaluation` removes the previous run's evaluation outputs before
  features are extracted again, so a folder never shows a report of other features.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from .errors import os_fault

log = logging.getLogger(__name__)

__all__ = ["check_writable", "OutputLock", "OutputLocked", "remove_stale_evaluation",
           "EVALUATION_OUTPUTS", "LOCK_NAME"]

LOCK_NAME = ".radiodeep.lock"
# what an evaluation writes from the features: recomputable with `radiodeep run --only evaluate`
EVALUATION_OUTPUTS = ("metrics.csv", "metrics.json", "predictions.csv", "selected_features.csv",
                      "delong.csv", "report.html", "roc_curves.png", "roc_curves.svg", "calibration.svg",
                      "calibration.png")

try:  # POSIX advisory locks; released by the kernel when the holder dies, however it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: the PID check alone decides
    fcntl = None


def check_writable(path: Path) -> str | None:
    """None when ``path`` is (or can be made) a writable folder, else a one-line reason with the fix."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                return (f"output folder {path} is not writable: {parent} is a file; move that file "
                        "or choose another output folder with --output")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".radiodeep-write-test.{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as err:
        return f"output folder {path} is not writable: {os_fault(OSError(err.errno, err.strerror))}"
    return None


class OutputLocked(RuntimeError):
    """Another live run holds the output folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


class OutputLock:
    """``with OutputLock(folder):`` one run at a time per output folder (re-entrant in a process)."""

    _held: dict[Path, "OutputLock"] = {}

    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._depth = 0
        self.taken_over: str | None = None  # what was said when a stale lock was taken over

    # ------------------------------------------------------------------ public
    def __enter__(self) -> "OutputLock":
        owner = OutputLock._held.get(self.folder)
        if owner is not None and owner._fd is not None:
            owner._depth += 1
            self._delegate = owner
            return self
        self._delegate = None
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self._delegate is not None:
            self._delegate._depth -= 1
            return
        self.release()

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._try_lock(fd):
                    raise OutputLocked(self._refusal())
                # the file may have been removed (or replaced) between open and lock: start again
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                if not self._flocked and self._live_holder():  # no kernel lock here: the PID decides
                    raise OutputLocked(self._refusal())
                previous = self._read(fd)
                if previous and previous.get("pid") != os.getpid():
                    self.taken_over = ("taking over the lock of a run that is gone (PID {} on {}, started {})"
                                       .format(previous.get("pid"), previous.get("host"), previous.get("started")))
                    log.warning("%s", self.taken_over)
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            OutputLock._held[self.folder] = self
            return
        raise OutputLocked(f"output folder {self.folder} is in use (its lock file keeps changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        OutputLock._held.pop(self.folder, None)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # releases the advisory lock
        self._fd = None

    # ------------------------------------------------------------------ helpers
    def _try_lock(self, fd: int) -> bool:
        """False when another process holds the kernel lock; sets ``_flocked``."""
        self._flocked = False
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks: PID check
                return True
            raise
        self._flocked = True
        return True

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 4096, 0)
            return json.loads(data.decode("utf-8")) if data.strip() else {}
        except (OSError, ValueError):
            return {}

    def _live_holder(self) -> bool:
        """Without kernel locks: is the PID in the lock file (another host's: assumed) alive?"""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not info or info.get("pid") == os.getpid():
            return False
        return info.get("host") != socket.gethostname() or _pid_alive(int(info.get("pid", -1)))

    def _refusal(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        who = (f"PID {info.get('pid', '?')} on {info.get('host', '?')}, started "
               f"{info.get('started', '?')}") if info else "a run that is starting"
        return (f"output folder {self.folder} is in use by another radiodeep run ({who}); wait for it "
                f"to finish, or give this run another folder with --output")


def remove_stale_evaluation(folder: Path) -> list[str]:
    """Remove the evaluation outputs of an earlier run (they may describe other features);
    ``radiodeep run --only evaluate`` recreates them. Returns the names removed."""
    removed = []
    for name in EVALUATION_OUTPUTS:
        p = Path(folder) / name
        if p.is_file():
            p.unlink()
            removed.append(name)
    if removed:
        log.info("removed the previous evaluation's %s: new features are being extracted "
                 "(radiodeep run --only evaluate recreates them)", ", ".join(removed))
    return removed
