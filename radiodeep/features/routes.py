"""The feature routes' one interface: a settings slice in; features, failures and previews out.

Every route (``handcrafted``, ``deep``; the ``clinical`` and learned ``image`` routes to
come) is a module that provides three functions, registered in :data:`ROUTES`:

* ``settings_from_config(config) -> RouteSettings``: the route's *slice* of the
  configuration, resolved once (parameter file read, weights located, label chosen) and
  frozen. Nothing else of the config reaches the route.
* ``config_problems(config) -> list[str]``: every problem of those settings that shows
  before any case is read (``radiodeep validate`` lists them beside the cohort's).
* ``extract(cohort, settings, context) -> RouteResult``: the feature table (one row per
  case, float columns), one :class:`~radiodeep.errors.CaseFailure` per case that could
  not be computed (the route goes on), provenance, diagnostics and, when
  ``context.previews`` asks for them, ``(label, image)`` previews for the contact sheet.

The slice *is* the cache key: :meth:`RouteSettings.cache_key` hashes every field of the
settings dataclass except those that declare ``metadata={"cache_key": False}`` (how the work
is run: batch size, device; or parts that key finer cache units). A field added to a
route's settings changes its key unless it says why not, so the key cannot drift from what
the route reads. How a run is executed (workers, backend, cache folder, progress bars) is
a :class:`RunContext`, never part of a key.

A learned ``image`` route would return per-case prepared ROI tensors in the same
:class:`RouteResult` shape (its ``features`` replaced by a tensor store keyed the same way);
a ``clinical`` route would read manifest covariates under a settings slice naming the
columns and their encoding.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from ..config import Config, settings_hash

__all__ = ["ROUTES", "RouteSettings", "RunContext", "Route", "get_route", "configured_routes", "route_problems"]

# route name -> module providing settings_from_config, config_problems, extract (imported when used:
# the deep route imports torch)
ROUTES: dict[str, str] = {
    "handcrafted": "radiodeep.features.handcrafted",
    "deep": "radiodeep.features.deep",
    "image": "radiodeep.learned.route",  # learned route: each case's prepared ROI tensor (issue 13)
    "clinical": "radiodeep.features.clinical",
}


@dataclass(frozen=True)
class RouteSettings:
    """Base of every route's settings slice; subclasses are frozen dataclasses of JSON-able values."""

    def key_dict(self) -> dict[str, Any]:
        """Every field that changes the values (the cache key), as JSON-able data."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("cache_key", True)}

    def cache_key(self) -> str:
        return settings_hash(self.key_dict())

    def as_dict(self) -> dict[str, Any]:
        """Every field (for provenance)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class RunContext:
    """How a route's work is run; never part of a cache key."""

    cache_dir: Path
    n_jobs: int = 1
    backend: str = "local"
    address: str | None = None
    progress: bool = True
    previews: bool = False  # return contact-sheet previews (the deep route: every crop the network sees)

    @classmethod
    def from_config(cls, config: Config, *, progress: bool | None = None, previews: bool = False) -> "RunContext":
        ex = config.execution
        return cls(config.cache_dir, ex.n_jobs, ex.backend, ex.address,
                   ex.progress if progress is None else progress, previews)


class Route(Protocol):
    """What a route module provides (see the module docstring)."""

    def settings_from_config(self, config: Config) -> RouteSettings: ...

    def config_problems(self, config: Config) -> list[str]: ...

    def extract(self, cohort, settings: RouteSettings, context: RunContext): ...


def get_route(name: str) -> ModuleType:
    """The module implementing route ``name`` (imported on first use)."""
    try:
        return importlib.import_module(ROUTES[name])
    except KeyError:
        raise ValueError(f"unknown feature route {name!r}; routes: {sorted(ROUTES)}") from None


def configured_routes(config: Config) -> list[str]:
    """The routes the config sets up, in :data:`ROUTES` order."""
    return [name for name in ROUTES if getattr(config.features, name, None) is not None]


def route_problems(config: Config) -> list[str]:
    """Every configured route's settings problems, all at once."""
    problems: list[str] = []
    for name in configured_routes(config):
        problems += get_route(name).config_problems(config)
    return problems
