"""Progress bars: shown only when asked for and when the output is a terminal (tqdm's ``disable=None``)."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             enabled: bool = True) -> Iterable[T]:
    # disable=None: tqdm itself turns the bar off when its output (stderr) is not a terminal
    return tqdm(iterable, total=total, desc=desc, disable=None if enabled else True, leave=False,
                dynamic_ncols=True)
