"""Paths as a report shows them: relative to the report's folder, never absolute.

A report is read where it lies (a Markdown viewer follows its links) and is copied about (reports/ in the
repository): an absolute path in it names somebody's machine. `RelativeTo(report_dir)` turns a path into
one relative to the report's folder; a file of the ddpm_bench package (the packaged model) is named
inside the package (`ddpm_bench/models/...`), wherever it is installed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed ddpm_bench package
# an absolute path, optionally followed by a plug-in's ":CALLABLE" (MODULE_FILE:CALLABLE)
_ABSOLUTE = re.compile(r"(/.*?)(:[A-Za-z_][\w.]*)?")


@dataclass(frozen=True)
class RelativeTo:
    """Paths relative to `base` (the report's folder)."""

    base: Path

    def path(self, path: str | Path) -> str:
        """`path` (relative to the working directory, or absolute) relative to the report's folder."""
        p = Path(path).resolve()
        if p.is_relative_to(PACKAGE_DIR):
            return str(Path(PACKAGE_DIR.name) / p.relative_to(PACKAGE_DIR))
        return os.path.relpath(p, self.base.resolve())

    def text(self, value):
        """A value of an output file as a report shows it: an absolute path (with or without a plug-in's
        ":CALLABLE") relative to the report's folder; any other string, and any other value, unchanged."""
        if not isinstance(value, str) or not os.path.isabs(value):
            return value
        m = _ABSOLUTE.fullmatch(value)
        return self.path(m[1]) + (m[2] or "")

    def json(self, obj):
        """`text` applied to every string inside a JSON-like object (dicts, lists)."""
        if isinstance(obj, dict):
            return {k: self.json(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.json(v) for v in obj]
        return self.text(obj)
