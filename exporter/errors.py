"""The exporter's exception tree. Library errors are translated into these at the edge.

ExporterError
 ├── ConfigError     the config file or the token cannot be used (message lists every problem)
 └── ApiError        one API request failed; ``reason`` is the poll-error label value
"""

from __future__ import annotations

from typing import Final

#: Values of the ``reason`` label of ``realtimekit_poll_errors_total``.
REASONS: Final = (
    "timeout",
    "connect",
    "rate_limited",
    "auth",
    "http_4xx",
    "http_5xx",
    "invalid_response",
    "not_found",  # appended: the order indexes stored counters and golden output
)
#: Reasons that belong to the token rather than to one meeting: a rejected token (401/403) and a
#: paused budget (429) fail every request sent with it alike.
TOKEN_REASONS: Final = ("auth", "rate_limited")


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""


class ConfigError(ExporterError):
    """The configuration is unusable. ``problems`` has one line per problem, naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ApiError(ExporterError):
    """A request to the RealtimeKit API did not give a valid answer.

    ``reason`` is one of :data:`REASONS`; ``status`` is the HTTP status when there was one;
    ``retry_after`` is the number of seconds the API asked us to wait (429), when it said;
    ``token`` names the token (``$ENV_VAR`` or its file, never the token itself) when the
    reason is one of :data:`TOKEN_REASONS`, so that its failures can be reported once.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        token: str | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown poll error reason {reason!r}")
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.token = token
        super().__init__(message)
