"""The README's own-study commands work verbatim on a `radiodeep synth` cohort, and the
config.resolved.yaml of a run validates from any folder and reruns the same features."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from radiodeep.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]


def own_study_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own study", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [ln.split("  #", 1)[0].strip() for ln in block.splitlines() if ln.strip()]


def test_readme_own_study_commands_run_verbatim(tmp_path, monkeypatch, capsys):
    work = tmp_path / "repo"
    work.mkdir()
    (work / "sample_configs").symlink_to(ROOT / "sample_configs")  # "run from this folder"
    monkeypatch.chdir(work)
    commands = own_study_commands()
    assert commands[0].startswith("uv run radiodeep synth") and len(commands) >= 6
    for cmd in commands:
        if cmd.startswith("uv run radiodeep "):
            rc = main(shlex.split(cmd)[3:])
        else:
            rc = subprocess.run(cmd, shell=True, cwd=work).returncode
        out = capsys.readouterr()
        assert rc == 0, f"{cmd!r} exited {rc}:\n{out.out}\n{out.err}"
    results = work / "study" / "results"
    assert (results / "report.html").is_file() and (results / "features_handcrafted.csv").is_file()
    metrics = pd.read_csv(results / "metrics.csv")
    assert list(metrics["experiment"]) == ["hc-su10-rf", "hc-relieff10-lr"]

    # the resolved configuration: validated from another folder, rerun from it: the same features
    resolved = results / "config.resolved.yaml"
    data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    assert data["cohort"]["manifest"] == "../manifest.csv" and data["output"] == "."
    assert data["features"]["handcrafted"]["params"] == "../pyradiomics_ct.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = (results / "features_handcrafted.csv").read_bytes()
    assert main(["validate", str(resolved)]) == 0
    assert main(["run", os.path.relpath(resolved, elsewhere), "--only", "extract"]) == 0
    assert (results / "features_handcrafted.csv").read_bytes() == before
    prov = (results / "features_handcrafted.provenance.json").read_text(encoding="utf-8")
    assert '"n_computed": 0' in prov  # the same settings slice: every case came from the cache
