"""Which structure is the ROI: exact name first, then a regular expression, or a SEG number."""

from __future__ import annotations

import pytest

from radiodeep.errors import CaseError
from radiodeep.masks.select import choose

NAMES = {1: "GTV_Mass_CT", 2: "GTV(1)", 3: "Body", 7: "gtv_node"}


def test_exact_name_wins_over_its_reading_as_a_regex():
    # 'GTV(1)' as a regex would match 'GTV1', not itself; the exact name is taken first
    assert choose(NAMES, "GTV(1)", "c", "RTSTRUCT")[0] == 2
    assert choose(NAMES, "Body", "c", "RTSTRUCT")[0] == 3


def test_regex_is_searched_and_case_sensitive_unless_it_says_otherwise():
    assert choose(NAMES, "(?i)node$", "c", "RTSTRUCT")[0] == 7
    with pytest.raises(CaseError, match="no structure .* matches roi_name 'NODE'"):
        choose(NAMES, "NODE", "c", "RTSTRUCT")


def test_invalid_regex_that_is_no_name_lists_the_names():
    with pytest.raises(CaseError, match=r"'GTV\[' is no name in the RTSTRUCT and not a valid regular expression "
                                        r".*names: 'GTV_Mass_CT', 'GTV\(1\)', 'Body', 'gtv_node'"):
        choose(NAMES, "GTV[", "c", "RTSTRUCT")


def test_segment_numbers_only_for_seg():
    assert choose(NAMES, 7, "c", "DICOM-SEG", numbers_allowed=True)[0] == 7
    with pytest.raises(CaseError, match="no structure in the RTSTRUCT matches roi_name '7'"):
        choose(NAMES, 7, "c", "RTSTRUCT")
    with pytest.raises(CaseError, match=r"no segment number 4 \(segments: 1: 'GTV_Mass_CT', 2: 'GTV\(1\)'"):
        choose(NAMES, "4", "c", "DICOM-SEG", numbers_allowed=True)


def test_the_only_structure_is_taken_without_a_name_and_an_empty_file_is_an_error():
    assert choose({5: "PTV"}, None, "c", "RTSTRUCT") == (5, "ROI 'PTV' taken (the only one in the RTSTRUCT; "
                                                            "no roi_name given)")
    with pytest.raises(CaseError, match="holds no structure"):
        choose({}, "GTV", "c", "RTSTRUCT")
