"""Progress bars: shown only when asked for and when stderr is a terminal."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             enabled: bool = True) -> Iterable[T]:
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
