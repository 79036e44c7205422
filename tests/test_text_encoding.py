"""Text files are read and written as UTF-8 whatever the machine's locale.

A call such as ``path.read_text()`` uses the locale's encoding: UTF-8 on most
desktops, ASCII under ``LC_ALL=C`` with UTF-8 mode off (as on some CI runners and
clusters), where the report (which holds "±", "×", "≥") then fails to read back.
Every text-mode ``open``/``read_text``/``write_text`` in the package, its tests,
benchmarks and scripts therefore names its encoding. Checked on the source (AST),
so the check holds on any machine, and once at run time under an ASCII locale.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("radiodeep", "tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py"))


def _mode(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode":
            return kw.value.value if isinstance(kw.value, ast.Constant) else "?"
    if len(call.args) > position:
        arg = call.args[position]
        return arg.value if isinstance(arg, ast.Constant) else "?"
    return None


def text_io_without_encoding(source: str) -> list[int]:
    """Line numbers of text-mode file I/O calls that do not name an encoding."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(kw.arg == "encoding" for kw in node.keywords):
            continue
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif name == "open" and owner == "os":
            continue  # os.open returns a file descriptor: bytes, no text decoding
        elif name in ("open", "fdopen") and owner not in ("Image", "tarfile", "zipfile"):
            # builtin open(path, mode) / os.fdopen(fd, mode); Path.open(mode)
            position = 1 if owner in (None, "os", "io") else 0
            mode = _mode(node, position)
            if mode is None or "b" not in mode:
                lines.append(node.lineno)
    return sorted(lines)


def test_the_checker_finds_what_it_should():
    bad = "p.read_text()\nopen('f')\nq.open('w')\nos.fdopen(fd, 'w')\n"
    good = ("p.read_text(encoding='utf-8')\nopen('f', 'rb')\nq.open('wb')\nos.fdopen(fd, 'wb')\n"
            "Image.open(p)\nopen('f', encoding='utf-8')\nos.open(p, os.O_RDONLY)\n")
    assert text_io_without_encoding(bad) == [1, 2, 3, 4]
    assert text_io_without_encoding(good) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_text_io_names_its_encoding(path):
    found = text_io_without_encoding(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)}: text I/O without encoding= at line(s) {found}"


def test_report_round_trip_under_an_ascii_locale(tmp_path):
    """The report writer and reader in a child process whose locale encoding is ASCII."""
    code = (
        "import locale, sys, pandas as pd\n"
        "from pathlib import Path\n"
        "from radiodeep.report import write_report\n"
        "assert locale.getpreferredencoding(False).lower() in ('ansi_x3.4-1968', 'ascii', 'us-ascii')\n"
        "p = write_report(Path(sys.argv[1]), title='t \\u00b1', metrics=pd.DataFrame(),\n"
        "    predictions=pd.DataFrame(), selection=pd.DataFrame(), delong=pd.DataFrame(),\n"
        "    failures=pd.DataFrame(), experiment_errors={}, provenance={}, contact_sheet=None)\n"
        "assert '\\u00b1' in p.read_text(encoding='utf-8')\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
