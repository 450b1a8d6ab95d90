"""The node simulator keeps a pod-status write going through an apiserver restart."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError

from e2e.lab.nodesim import transient, write_status


class Flaky:
    """Fails with the given errors in turn, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def refused() -> BaseException:
    return MaxRetryError(None, "/api", NewConnectionError(None, "connection refused"))  # type: ignore[arg-type]


def test_a_restarting_apiserver_is_retried_until_the_write_lands() -> None:
    write = Flaky(refused(), ApiException(status=503), ApiException(status=500), refused())
    slept: list[float] = []
    assert write_status(write, cancelled=lambda: False, sleep=slept.append) is True
    assert write.calls == 5
    assert len(slept) == 4 and all(0 < s <= 5 for s in slept)


def test_a_gone_pod_ends_the_write_without_error() -> None:
    write = Flaky(refused(), ApiException(status=404))
    assert write_status(write, cancelled=lambda: False, sleep=lambda _: None) is False
    assert write.calls == 2


def test_a_pod_being_deleted_stops_the_retries() -> None:
    write = Flaky(refused(), refused(), refused())
    state = {"deleting": False}

    def sleep(_: float) -> None:
        state["deleting"] = True

    assert write_status(write, cancelled=lambda: state["deleting"], sleep=sleep) is False
    assert write.calls == 1


def test_a_refusal_is_not_retried() -> None:
    write = Flaky(ApiException(status=422, reason="Unprocessable Entity"))
    with pytest.raises(ApiException) as info:
        write_status(write, cancelled=lambda: False, sleep=lambda _: None)
    assert info.value.status == 422
    assert write.calls == 1


def test_retries_give_up_after_the_deadline() -> None:
    write = Flaky(*[ApiException(status=503) for _ in range(1000)])
    with pytest.raises(ApiException):
        write_status(write, cancelled=lambda: False, give_up_after=0.0, sleep=lambda _: None)
    assert write.calls == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ApiException(status=0), True),
        (ApiException(status=429), True),
        (ApiException(status=503), True),
        (ApiException(status=409), False),
        (ApiException(status=403), False),
        (ConnectionResetError(), True),
        (ValueError("bad body"), False),
    ],
)
def test_transient_errors(error: BaseException, expected: bool) -> None:
    assert transient(error) is expected
