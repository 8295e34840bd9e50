"""The validator's report: one :class:`Check` per silent failure looked for, gathered in a :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass
class Check:
    """One line of the report: ``status`` is pass/fail/warn/skip; ``fix`` says what to do on fail/warn."""

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    """All checks of one directory."""

    directory: str
    layout: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings and skips allowed)."""
        return not self.failures()

    def failures(self) -> list[Check]:
        """The failed checks, in order."""
        return [c for c in self.checks if c.status == FAIL]

    def get(self, name: str) -> Check | None:
        """The check called ``name`` (None if it did not run)."""
        return next((c for c in self.checks if c.name == name), None)
