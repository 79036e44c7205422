#!/usr/bin/env python3
"""Open a report in headless Chromium and save a screenshot: a real-browser check of report.html.

    python scripts/screenshot_report.py results/report.html report.png [--window-size 1280,2400]

Chromium is Debian's package (``apt-get install chromium``); ``$CHROMIUM`` overrides where it
is looked for. The browser runs with a fresh throw-away profile and with networking features
off, so the page can only render what it carries itself.

Exit status: 0 the screenshot was written; 1 it is missing or empty (or Chromium failed or
timed out); 2 the report or Chromium could not be found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "google-chrome")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    for c in CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    return None


def chromium_command(chromium: str, report: Path, out: Path, profile: Path, window_size: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={window_size}",
        report.resolve().as_uri(),
    ]


def screenshot(report: Path, out: Path, *, window_size: str = "1280,2400", timeout: float = 120.0,
               chromium: str | None = None) -> int:
    report, out = Path(report), Path(out)
    if not report.is_file():
        print(f"error: report not found: {report}", file=sys.stderr)
        return 2
    chromium = chromium or find_chromium()
    if chromium is None:
        print("error: Chromium not found (apt-get install chromium, or set $CHROMIUM)", file=sys.stderr)
        return 2
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a stale screenshot must not pass for a new one
    with tempfile.TemporaryDirectory(prefix="radiodeep-chromium-") as profile:
        cmd = chromium_command(chromium, report, out, Path(profile), window_size)
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout, text=True, errors="replace")
        except subprocess.TimeoutExpired:
            print(f"error: Chromium did not finish within {timeout:g} s", file=sys.stderr)
            return 1
    ok = out.is_file() and out.stat().st_size > len(PNG_MAGIC) and out.read_bytes()[:8] == PNG_MAGIC
    if not ok:
        print(f"error: no screenshot written to {out} (Chromium exit status {proc.returncode})",
              file=sys.stderr)
        tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
        if tail:
            print(tail, file=sys.stderr)
        return 1
    print(f"{out} ({out.stat().st_size} bytes, window {window_size})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the report.html to open")
    ap.add_argument("out", type=Path, help="where to write the PNG screenshot")
    ap.add_argument("--window-size", default="1280,2400", help="WIDTH,HEIGHT in pixels (default 1280,2400)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up (default 120)")
    args = ap.parse_args(argv)
    return screenshot(args.report, args.out, window_size=args.window_size, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
