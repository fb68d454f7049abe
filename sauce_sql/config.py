"""The store's options, validated once in the constructor and frozen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sauce_sql import validation
from sauce_sql.engine import DURABILITY_MODES
from sauce_sql.errors import InvalidInput
from sauce_sql.history_sql import HISTORY_IP_MODES
from sauce_sql.redact import shown

__all__ = ["DEFAULT_HISTORY_MAX_AGE", "MAX_AGE_LIMIT", "TIMEOUT_LIMIT", "StoreConfig"]

MAX_AGE_LIMIT = 100 * 365.25 * 24 * 3600
#: 400 days, the longest a browser keeps a cookie: a visitor who could still come
#: back finds their archived session.
DEFAULT_HISTORY_MAX_AGE = 34_560_000.0
#: The longest bound a call may have: a day.
TIMEOUT_LIMIT = 24 * 3600.0


def _count(value: object, what: str, *, least: int, most: int | None = None) -> int:
    """A whole number from ``least`` to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < least or (most is not None and value > most):
        bounds = f"from {least} to {most}" if most is not None else f">= {least}"
        raise InvalidInput(f"{what} must be {bounds}, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Validated store options (everything but the database itself)."""

    table_name: str
    session_max_age: float
    clean_interval: float | None
    clock: Callable[[], datetime] | None
    durability: str
    timeout: float
    max_connections: int
    max_idle_connections: int
    lean_expiry: bool = False
    keep_history: bool = True
    history_max_age: float | None = DEFAULT_HISTORY_MAX_AGE
    history_ip: str = "mask"

    @classmethod
    def create(
        cls,
        *,
        table_name: object,
        session_max_age: object,
        clean_interval: object,
        clock: object,
        durability: object,
        timeout: object = 10.0,
        max_connections: object = 10,
        max_idle_connections: object = None,
        lean_expiry: object = False,
        keep_history: object = True,
        history_max_age: object = DEFAULT_HISTORY_MAX_AGE,
        history_ip: object = "mask",
    ) -> StoreConfig:
        """Check every option, raising InvalidInput or TypeError on the first bad one."""
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if not isinstance(lean_expiry, bool):
            raise TypeError(f"lean_expiry must be a bool, not {type(lean_expiry).__name__}")
        if durability not in DURABILITY_MODES:
            raise InvalidInput(f"durability must be 'normal' or 'full', got {shown(durability)}")
        max_age = validation.positive_seconds(session_max_age, "session_max_age")
        if max_age > MAX_AGE_LIMIT:
            # Expiry times must stay within datetime's range (year 9999).
            raise InvalidInput(
                f"session_max_age must be at most {MAX_AGE_LIMIT:.0f} s (100 years), "
                f"got {shown(max_age)}"
            )
        seconds = validation.positive_seconds(timeout, "timeout")
        if seconds > TIMEOUT_LIMIT:
            raise InvalidInput(f"timeout must be at most {TIMEOUT_LIMIT:.0f} s, got {seconds!r}")
        most = _count(max_connections, "max_connections", least=1)
        idle = (
            most
            if max_idle_connections is None
            else _count(max_idle_connections, "max_idle_connections", least=0, most=most)
        )
        if not isinstance(keep_history, bool):
            raise TypeError(f"keep_history must be a bool, not {type(keep_history).__name__}")
        if history_ip not in HISTORY_IP_MODES:
            raise InvalidInput(
                f"history_ip must be one of {', '.join(map(repr, HISTORY_IP_MODES))}, "
                f"got {shown(history_ip)}"
            )
        kept: float | None = None
        if history_max_age is not None:
            kept = validation.positive_seconds(history_max_age, "history_max_age")
            if kept > MAX_AGE_LIMIT:
                raise InvalidInput(
                    f"history_max_age must be at most {MAX_AGE_LIMIT:.0f} s (100 years) or "
                    f"None (forever), got {shown(kept)}"
                )
        return cls(
            table_name=validation.table_name(table_name),
            session_max_age=max_age,
            clean_interval=(
                None
                if clean_interval is None
                else validation.positive_seconds(clean_interval, "clean_interval")
            ),
            clock=clock,
            durability=str(durability),
            timeout=seconds,
            max_connections=most,
            max_idle_connections=idle,
            lean_expiry=lean_expiry,
            keep_history=keep_history,
            history_max_age=kept,
            history_ip=str(history_ip),
        )
