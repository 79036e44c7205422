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
