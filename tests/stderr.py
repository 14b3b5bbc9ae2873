"""What a test reads from stderr: the tests run at T = 20 or less, where every command rightly warns that
the schedule does not reach noise; that warning is dropped here so that a test sees the lines it is about."""

from __future__ import annotations

SCHEDULE_WARNING = "warning: the schedule does not reach noise"


def without_schedule_warning(err: str) -> str:
    return "".join(line for line in err.splitlines(keepends=True) if SCHEDULE_WARNING not in line)
