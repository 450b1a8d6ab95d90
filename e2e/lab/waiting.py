"""Polling a condition with a deadline (tenacity), and the lab's error type."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_fixed


class LabError(RuntimeError):
    """The lab could not be brought to the requested state; the message says why."""


class _NotYet(Exception):
    pass


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    message: str | Callable[[], str] = "condition not met",
    raise_error: bool = True,
) -> bool:
    """Poll ``predicate`` until it returns True or ``timeout`` seconds pass.

    An exception raised by ``predicate`` counts as "not yet" (except LabError,
    which ends the wait at once and propagates); the last one is quoted in the
    :class:`LabError` raised at the deadline (unless ``raise_error`` is False, in
    which case False is returned).
    """
    last: list[BaseException] = []

    def attempt() -> None:
        try:
            ok = predicate()
        except LabError:
            raise  # a definite failure (e.g. the process died): stop waiting
        except Exception as exc:
            last[:] = [exc]
            raise _NotYet from exc
        if not ok:
            raise _NotYet

    try:
        for attempt_ctx in Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_fixed(interval),
            retry=retry_if_exception_type(_NotYet),
        ):
            with attempt_ctx:
                attempt()
    except RetryError:
        if not raise_error:
            return False
        text = message() if callable(message) else message
        detail = f" (last error: {type(last[0]).__name__}: {last[0]})" if last else ""
        raise LabError(f"{text} after {timeout:.0f}s{detail}") from None
    return True
