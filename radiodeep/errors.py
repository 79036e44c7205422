"""Errors that name the case they belong to."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class CaseError(Exception):
    """A problem with one case; the message always starts with the case id."""

    def __init__(self, case_id: str, reason: str, stage: str = "input"):
        self.case_id = str(case_id)
        self.reason = reason
        self.stage = stage
        super().__init__(f"case {self.case_id}: {reason}")


@dataclass(frozen=True)
class CaseFailure:
    """One row of a failures table (``failures.csv``)."""

    case_id: str
    stage: str
    reason: str

    @classmethod
    def from_error(cls, err: Exception, case_id: str, stage: str) -> "CaseFailure":
        if isinstance(err, CaseError):
            return cls(err.case_id, err.stage or stage, err.reason)
        return cls(str(case_id), stage, f"{type(err).__name__}: {err}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- exit codes
class ExitCode:
    """What ``radiodeep run`` (and ``demo``) exit with; documented in the README and ``run --help``."""

    OK = 0                # every case and every experiment succeeded
    STOPPED = 1           # the run could not start or go on (message on stderr and in the log)
    CONFIG = 2            # the config file cannot be read or is invalid; bad command line
    CASES_FAILED = 3      # finished, but case(s) failed in extraction (cohort.on_invalid: error)
    EXPERIMENT_FAILED = 4  # finished, but experiment(s) could not run (cases may have failed too)
    INTERRUPTED = 130     # Ctrl-C: finished cases are cached
    TERMINATED = 143      # SIGTERM (scheduler, timeout, docker stop): finished cases are cached

    @classmethod
    def describe(cls) -> str:
        return ("exit codes: 0 every case and experiment succeeded; 1 the run could not start or "
                "go on; 2 invalid config or command line; 3 finished, but cases failed during "
                "extraction (not with cohort.on_invalid: skip); 4 finished, but an experiment "
                "could not run; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that the same clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- foreseeable OS faults
def os_fault(err: OSError, path=None) -> str:
    """One line for a foreseeable file-system fault: the path, what went wrong, the fix."""
    import errno as _errno

    where = err.filename if getattr(err, "filename", None) else path
    where = f": {where}" if where else ""
    reason = err.strerror or str(err)
    code = err.errno
    if code == _errno.ENOSPC or code == _errno.EDQUOT:
        fix = ("free disk space (or give --output / execution.cache_dir on another disk) and run "
               "the same command again: finished cases are cached and are not recomputed")
    elif code in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        fix = ("check its permissions (a read-only disk?), or choose another folder (--output; "
               "execution.cache_dir for the feature cache)")
    elif code in (_errno.EEXIST, _errno.ENOTDIR):
        fix = "a file is in the way of that folder: move it, or choose another folder"
    elif code == _errno.ENAMETOOLONG:
        fix = "choose a shorter output path (--output) or shorter case ids"
    else:
        fix = "check the folder and run the same command again: finished cases are cached"
    return f"{reason}{where}; {fix}"
