"""The judge's exceptions. A failed or malformed judge *answer* is not an exception: it is counted
as a missing judgement in the report. These are for a comparison that cannot run at all."""

from __future__ import annotations

from orchestrator.errors import InvalidSpecError, TrainyardError


class JudgeError(TrainyardError):
    """Base of the judge's errors."""


class JudgeNotConfiguredError(JudgeError):
    """No API key is set (`TRAINYARD_OPENAI_API_KEY`): the judge is off."""

    http_status = 503


class InvalidComparisonError(InvalidSpecError, JudgeError):
    """The items and answers given cannot be compared (e.g. a model lacks answers)."""
