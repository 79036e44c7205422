"""Check a config and its cohort without computing any feature; list every problem."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .cohort import Cohort, check_cases, read_manifest
from .config import Config
from .errors import CaseError, CaseFailure
from .imageio import geometry_mismatch, read_case_images, read_image
from .progress import progress as _progress

log = logging.getLogger(__name__)

__all__ = ["CohortReport", "check_routes", "load_cohort"]


@dataclass
class CohortReport:
    """The cohort as read, manifest-level problems, and per-case failures."""

    cohort: Cohort | None
    problems: list[str] = field(default_factory=list)  # manifest/config level: block any run
    failures: list[CaseFailure] = field(default_factory=list)  # per case
    notes: list[str] = field(default_factory=list)  # per case, what was adapted (not a problem)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failures

    def lines(self) -> list[str]:
        return list(self.problems) + [f"case {f.case_id}: {f.reason}" for f in self.failures]


def load_cohort(config: Config, *, check_images: bool = True, progress: bool = False) -> CohortReport:
    """Read the manifest and check every case (files, geometry, mask label)."""
    cc = config.cohort
    try:
        cohort, problems = read_manifest(config.resolve(cc.manifest), mask_label=cc.mask_label,
                                         sequences=cc.sequences, positive_label=cc.positive_label)
    except ValueError as err:
        return CohortReport(None, [str(err)])
    if config.evaluation.scheme == "external":
        splits = {c.split for c in cohort.cases}
        for want in (config.evaluation.train_split, config.evaluation.test_split):
            if want not in splits:
                problems.append(f"evaluation.scheme external needs manifest column 'split' with value "
                                f"{want!r}; found {sorted(s for s in splits if s) or 'none'}")
    failures: list[CaseFailure] = []
    notes: list[str] = []
    if check_images:
        def check(case):
            said: list[str] = []
            image, _ = read_case_images(case, cc.geometry_tolerance, cc.resample_mask, notes=said)
            notes.extend(f"case {case.case_id}: {n}" for n in said)
            for seq in case.sequences:
                other = read_image(seq, case.case_id, "sequence")
                problem = geometry_mismatch(image, other, cc.geometry_tolerance, what="sequence")
                if problem is not None:
                    raise CaseError(case.case_id, f"sequence {seq.name} does not share the image's grid: {problem}")

        failures = check_cases(_progress(cohort.cases, desc="checking cases", enabled=progress),
                               check, stage="input")
    return CohortReport(cohort, problems, failures, notes)


def check_routes(config: Config) -> list[str]:
    """Problems of the feature routes' settings that show before any case is read
    (for the deep route: backbone, layer, input size, device, weights on this machine)."""
    from .learned.build import check_learned  # learned route: backbone, weights, layer of each experiment

    learned = check_learned(config)
    if config.features.deep is None:
        return learned
    from .features.deep import check_deep_config  # imports torch: only when the route is used

    return check_deep_config(config) + learned


def check_output_writable(path: Path) -> str | None:
    """None when ``path`` can be created and written, else the reason."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".radiodeep-write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        return f"output folder {path} is not writable: {err.strerror or err}"
    return None
