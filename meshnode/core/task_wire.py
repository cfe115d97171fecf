"""What both sides of task negotiation share: wire limits, reasons and rejection codes.

Theory of operation
-------------------
A provider's refusal travels as a reason string ``"<code>: <detail>"`` whose code is a
:class:`RejectCode`; both sides clip reasons to what the wire carries
(:data:`MAX_REASON_BYTES`) and count deadlines in whole milliseconds (:func:`whole_ms`).
:mod:`meshnode.core.provider` and :mod:`meshnode.core.requester` import these helpers; nothing
here keeps state.
"""

from __future__ import annotations

import enum
import math

__all__ = [
    "MAX_DEADLINE_MS",
    "MAX_ELAPSED_MS",
    "MAX_REASON_BYTES",
    "RejectCode",
    "clip_reason",
    "reject_code",
    "reject_reason",
    "whole_ms",
]

MAX_DEADLINE_MS = 86_400_000
"""Largest deadline the wire carries (one day, the range of ``deadline_ms``)."""

MAX_REASON_BYTES = 512
"""Longest reason or error string the wire carries (UTF-8 bytes); longer text is clipped."""

MAX_ELAPSED_MS = 1e9
"""Largest ``elapsed_ms`` the wire carries."""


def clip_reason(text: str, limit: int = MAX_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (with an ellipsis when cut)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


class RejectCode(enum.Enum):
    """Why a provider said no. A REJECTED reason reads ``"<code>: <detail>"``."""

    UNKNOWN_CAPABILITY = "unknown_capability"
    OVER_BUDGET = "over_budget"
    DEADLINE_TOO_SHORT = "deadline_too_short"
    INVALID_INPUT = "invalid_input"
    BUSY = "busy"
    TASK_ID_IN_USE = "task_id_in_use"
    COUNTER_DECLINED = "counter_declined"
    RESERVATION_EXPIRED = "reservation_expired"
    CANCELLED = "cancelled"
    UNKNOWN_TASK = "unknown_task"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    OUTPUT_INVALID = "output_invalid"
    FAIR_SHARE = "fair_share"
    RESULT_FORGOTTEN = "result_forgotten"
    FORBIDDEN = "forbidden"
    """The capability's :class:`~meshnode.core.authorization.Allow` rule refused the
    requester (not the provider's failure)."""
    QUOTA = "quota"
    """The requester is over the capability's per-requester
    :class:`~meshnode.core.authorization.Quota` (not the provider's failure)."""


def reject_code(reason: str) -> RejectCode | None:
    """The :class:`RejectCode` a reason or error string starts with, if any."""
    code = reason.split(":", 1)[0].strip()
    try:
        return RejectCode(code)
    except ValueError:
        return None


def reject_reason(code: RejectCode, detail: str) -> str:
    """``"<code>: <detail>"``, clipped to what the wire carries."""
    return clip_reason(f"{code.value}: {detail}")


def whole_ms(seconds: float) -> int:
    """Whole milliseconds in ``seconds``, rounding down (after absorbing float noise, so
    that 30.0 − 2.5 s is 27,500 ms and not 27,499)."""
    return math.floor(round(seconds * 1000.0, 6))
