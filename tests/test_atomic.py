"""One atomic writer for every output and cache file: whole or absent, and readable like any
other file of the user's (the umask), not owner-only as mkstemp makes them."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import SimpleITK as sitk

from radiodeep.atomic import atomic_path, umask, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_file_follows_the_umask_and_replaces_in_one_step(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n", encoding="utf-8")
    write_atomic(target, "new\n")
    assert target.read_text(encoding="utf-8") == "new\n"
    assert _mode(target) == 0o666 & ~umask()
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_audit_records_and_mask_cache_entries_are_not_owner_only(tmp_path):
    from radiodeep.learned.audit import write_audit
    from radiodeep.masks import cache

    want = 0o666 & ~umask()
    audit = write_audit({"heldout_cases": ["c1"], "training_cases": ["c2"], "leak": False, "checks": {}},
                        tmp_path / "audit", "exp")
    assert _mode(audit) == want
    mask = sitk.GetImageFromArray(np.ones((2, 3, 3), np.uint8))
    cache.save(tmp_path / "masks", "k", mask, [])
    assert [_mode(p) for p in (tmp_path / "masks").iterdir()] == [want]
