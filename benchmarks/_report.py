"""The report every benchmark script here prints and saves: its command, the machine, its lines."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path


class Report:
    """Call it with a line to print it and keep it; `save` writes the kept lines as markdown."""

    def __init__(self, setup: str) -> None:
        self.lines: list[str] = []
        self(f"command: {' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}")
        self(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), "
            f"Python {platform.python_version()}; {setup}"
        )

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path: Path | None, title: str) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {title}\n\n```\n" + "\n".join(self.lines) + "\n```\n")
