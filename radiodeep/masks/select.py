"""Which structure of an RTSTRUCT or segment of a SEG is the ROI.

``roi`` is an exact name, else a regular expression searched in each name
(``(?i)^gtv`` for a case-insensitive prefix); for a SEG also a segment number.
None picks the only structure there is. Anything else is a :class:`CaseError` that
lists the names available (with a did-you-mean when nothing matched).
"""

from __future__ import annotations

import difflib
import re

from ..errors import CaseError

__all__ = ["choose"]


def choose(names: dict[int, str], roi: str | int | None, case_id: str, what: str,
           numbers_allowed: bool = False) -> tuple[int, str]:
    """``(number, note)`` of the one entry of ``names`` (number -> name) that ``roi`` picks."""
    listing = _listing(names, numbers_allowed)
    if not names:
        raise CaseError(case_id, f"the {what} holds no structure")
    if roi is None or (isinstance(roi, str) and not roi.strip()):
        if len(names) == 1:
            (num, name), = names.items()
            return num, f"ROI {name!r} taken (the only one in the {what}; no roi_name given)"
        raise CaseError(case_id, f"the {what} holds {len(names)} structures ({listing}); "
                                 "name the ROI with cohort.roi_name or a roi_name column")
    spec = str(roi).strip()
    if numbers_allowed and re.fullmatch(r"\d+", spec):
        num = int(spec)
        if num in names:
            return num, f"segment {num} ({names[num]!r}) taken (roi_name {spec})"
        raise CaseError(case_id, f"the {what} has no segment number {num} (segments: {listing})")
    exact = [n for n, name in names.items() if name == spec]
    if len(exact) == 1:
        return exact[0], f"ROI {names[exact[0]]!r} taken (roi_name {spec!r}, exact name)"
    if not exact:
        try:
            pattern = re.compile(spec)
        except re.error as err:
            raise CaseError(case_id, f"roi_name {spec!r} is no name in the {what} and not a valid regular "
                                     f"expression ({err}); names: {listing}") from None
        exact = [n for n, name in names.items() if pattern.search(name)]
    if len(exact) == 1:
        return exact[0], f"ROI {names[exact[0]]!r} taken (roi_name {spec!r} matched 1 of {len(names)}: {listing})"
    if not exact:
        close = difflib.get_close_matches(spec.lower(), [v.lower() for v in names.values()], n=3, cutoff=0.5)
        back = {v.lower(): v for v in names.values()}
        hint = f"; did you mean {', '.join(repr(back[c]) for c in close)}?" if close else ""
        raise CaseError(case_id, f"no structure in the {what} matches roi_name {spec!r} "
                                 f"(names available: {listing}){hint}")
    matched = ", ".join(_one(n, names[n], numbers_allowed) for n in exact)
    raise CaseError(case_id, f"roi_name {spec!r} matches {len(exact)} structures in the {what} ({matched}); "
                             "make it match exactly one" + (" (or give the segment number)" if numbers_allowed else ""))


def _one(num: int, name: str, numbers: bool) -> str:
    return f"{num}: {name!r}" if numbers else repr(name)


def _listing(names: dict[int, str], numbers: bool) -> str:
    return ", ".join(_one(n, v, numbers) for n, v in names.items()) or "none"
