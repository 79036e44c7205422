"""Shared fixtures. Tests that need ../shared skip cleanly where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CASES = ROOT.parent / "shared" / "data" / "pyradiomics_testcases"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def shared_cases() -> Path:
    """The five real PyRadiomics cases (CT and MR), or a skip where ../shared is absent."""
    if not (SHARED_CASES / "lung1_image.nrrd").exists():
        pytest.skip(f"shared test cases not found at {SHARED_CASES}")
    return SHARED_CASES
