"""What a run would do, without doing it (`dry_run=True`, `--dry-run`): its stages, each with the network
evaluations it makes and an ETA from a timed probe, typed for a Python caller and printed by the command
line (`lines`). A leaf module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DryRunStage:
    """One stage: its name, what it does in words, its network evaluations and its ETA (None: not known)."""

    name: str
    what: str
    network_evals: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class DryRun:
    """A dry run's answer: the stages in the order the run does them, on which device, and what the command
    prints (`lines`)."""

    command: str
    device: str
    stages: tuple[DryRunStage, ...]
    lines: tuple[str, ...]
    alternatives: tuple[DryRunStage, ...] = ()  # what another estimator of the same quantity would cost

    @property
    def network_evals(self) -> int:
        """Every network evaluation of the stages that count them."""
        return sum(s.network_evals or 0 for s in self.stages)

    @property
    def seconds(self) -> float:
        """The ETA of the stages that have one, seconds."""
        return sum(s.seconds or 0.0 for s in self.stages)

    def __repr__(self) -> str:
        return f"<DryRun {self.command} on {self.device}:\n  " + "\n  ".join(self.lines) + ">"
