"""The Prometheus provider without a server: result parsing, error text, the factory's cache."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import certifi
import pytest

from modelrollout.api.models import PrometheusSpec, SecretKeyRef
from modelrollout.metrics.base import NoData, ProviderError, Samples, Series, Value, Vector
from modelrollout.metrics.prometheus import (
    PrometheusProvider,
    PrometheusProviderFactory,
    _error_text,
    parse_instant,
    parse_range,
    parse_vector,
    redact_address,
)
from modelrollout.outbound.text import CUT_MARKER


def _series(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, value]}


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ([_series("0.25")], Value(0.25)),
        ([1700000000.0, "3"], Value(3.0)),  # a scalar
        ([], NoData("query returned no series")),
    ],
)
def test_parse_instant(result: Any, expected: object) -> None:
    assert parse_instant(result) == expected


@pytest.mark.parametrize(("text", "word"), [("NaN", "NaN"), ("+Inf", "+Inf"), ("-Inf", "-Inf")])
def test_parse_instant_non_finite_is_no_data(text: str, word: str) -> None:
    outcome = parse_instant([_series(text)])
    assert isinstance(outcome, NoData)
    assert word in outcome.reason


def test_parse_instant_several_series_is_an_error() -> None:
    outcome = parse_instant([_series("1", pod="a"), _series("2", pod="b"), _series("3", pod="c")])
    assert isinstance(outcome, ProviderError)
    assert "query returned 3 series, expected 1" in outcome.reason
    assert "'pod': 'a'" in outcome.reason


def test_parse_instant_range_vector_is_an_error() -> None:
    outcome = parse_instant([{"metric": {}, "values": [[1.0, "1"]]}])
    assert isinstance(outcome, ProviderError)
    assert "range vector" in outcome.reason


@pytest.mark.parametrize(
    "result", [{"oops": 1}, [{"metric": {}}], [_series("abc")], [{"metric": {}, "value": [1.0]}]]
)
def test_parse_instant_garbage_raises_value_error(result: Any) -> None:
    with pytest.raises(ValueError):
        parse_instant(result)


def test_parse_range_keeps_finite_samples() -> None:
    values = [[1.0, "0.1"], [2.0, "NaN"], [3.0, "0.3"], [4.0, "+Inf"]]
    assert parse_range([{"metric": {}, "values": values}]) == Samples([0.1, 0.3])


def test_parse_range_edge_cases() -> None:
    assert isinstance(parse_range([]), NoData)
    assert isinstance(parse_range([{"metric": {}, "values": [[1.0, "NaN"]]}]), NoData)
    two = [{"metric": {"pod": "a"}, "values": []}, {"metric": {"pod": "b"}, "values": []}]
    outcome = parse_range(two)
    assert isinstance(outcome, ProviderError) and "2 series" in outcome.reason


def test_parse_vector() -> None:
    outcome = parse_vector([_series("5", le="0.5"), _series("9", le="+Inf")])
    assert outcome == Vector((Series({"le": "0.5"}, 5.0), Series({"le": "+Inf"}, 9.0)))
    assert isinstance(parse_vector([]), NoData)
    assert isinstance(parse_vector([1.0, "2"]), ProviderError)
    nan = parse_vector([_series("NaN", le="1")])
    assert isinstance(nan, Vector) and math.isnan(nan.series[0].value)


def test_error_text_keeps_prometheus_message() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}'
    assert _error_text(400, body) == "bad_data: 1:5: parse error: unexpected"


def test_error_text_of_a_non_json_body_is_cut_with_a_marker() -> None:
    text = _error_text(502, b"<html>" + b"x" * 5000)
    assert text.startswith("<html>xxx") and text.endswith(CUT_MARKER) and len(text) <= 300
    assert _error_text(503, b"") == "Service Unavailable"


def test_a_long_prometheus_error_is_cut_too() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"' + b"y" * 5000 + b'"}'
    text = _error_text(400, body)
    assert text.startswith("bad_data: yyy") and text.endswith(CUT_MARKER) and len(text) <= 300


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("http://prom:9090", "http://prom:9090"),
        ("https://user:s3cret@prom.example/prefix", "https://prom.example/prefix"),
        ("http://u:p@10.0.0.1:9090", "http://10.0.0.1:9090"),
    ],
)
def test_redact_address(address: str, shown: str) -> None:
    assert redact_address(address) == shown


async def test_repr_hides_credentials() -> None:
    provider = PrometheusProvider("http://u:pw@prom:9090", 2.0, basic_auth=("u", "pw"))
    assert "pw" not in repr(provider)
    await provider.aclose()
    token = PrometheusProvider("http://prom:9090", 2.0, bearer_token="tok-123")
    assert "tok-123" not in repr(token)
    await token.aclose()


def test_provider_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        PrometheusProvider("http://prom:9090", 0)
    with pytest.raises(ValueError, match="not both"):
        PrometheusProvider("http://prom:9090", 1, bearer_token="t", basic_auth=("u", "p"))
    with pytest.raises(ValueError, match="not valid PEM"):
        PrometheusProvider("https://prom:9090", 1, ca_pem="not a certificate")


# ----------------------------------------------------------------------------- factory

SECRETS = {("prom", "token"): "tok-1", ("prom", "user"): "alice", ("prom", "pass"): "pw"}


def _reader(secrets: dict[tuple[str, str], str]) -> Any:
    def read(ref: SecretKeyRef) -> str:
        return secrets[(ref.name, ref.key)]

    return read


def _spec(**fields: Any) -> PrometheusSpec:
    return PrometheusSpec.model_validate(fields)


async def test_factory_shares_providers_per_address_and_auth() -> None:
    factory = PrometheusProviderFactory("http://default:9090")
    try:
        read = _reader(SECRETS)
        a = await factory.provider_for(_spec(), read)
        b = await factory.provider_for(_spec(), read)
        assert a is b and a.address == "http://default:9090"
        other = await factory.provider_for(_spec(address="http://other:9090"), read)
        assert other is not a
        token_spec = _spec(auth={"bearerToken": {"name": "prom", "key": "token"}})
        with_token = await factory.provider_for(token_spec, read)
        assert with_token is not a
        assert await factory.provider_for(token_spec, read) is with_token
        rotated = await factory.provider_for(token_spec, _reader({("prom", "token"): "tok-2"}))
        assert rotated is not with_token
        assert await factory.provider_for(_spec(timeout="9s"), read) is not a
        assert len(factory) == 5
    finally:
        await factory.aclose()


async def test_factory_accepts_an_async_secret_reader() -> None:
    async def read(ref: SecretKeyRef) -> str:
        return SECRETS[(ref.name, ref.key)]

    factory = PrometheusProviderFactory("http://default:9090")
    try:
        spec = _spec(
            auth={
                "username": {"name": "prom", "key": "user"},
                "password": {"name": "prom", "key": "pass"},
            }
        )
        provider = await factory.provider_for(spec, read)
        assert "pw" not in repr(provider)
    finally:
        await factory.aclose()


async def test_factory_errors() -> None:
    factory = PrometheusProviderFactory()
    try:
        with pytest.raises(ValueError, match="no Prometheus address"):
            await factory.provider_for(_spec(), _reader(SECRETS))
        half = _spec(address="http://p:9090", auth={"username": {"name": "prom", "key": "user"}})
        with pytest.raises(ValueError, match="both username and password"):
            await factory.provider_for(half, _reader(SECRETS))
    finally:
        await factory.aclose()


async def test_factory_evicts_least_recently_used() -> None:
    factory = PrometheusProviderFactory(max_cached=2)
    try:
        read = _reader(SECRETS)
        first = await factory.provider_for(_spec(address="http://p1:9090"), read)
        await factory.provider_for(_spec(address="http://p2:9090"), read)
        assert await factory.provider_for(_spec(address="http://p1:9090"), read) is first
        await factory.provider_for(_spec(address="http://p3:9090"), read)  # evicts p2
        assert len(factory) == 2
        assert await factory.provider_for(_spec(address="http://p1:9090"), read) is first
    finally:
        await factory.aclose()


async def test_ca_bundle_stays_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each bundle once went to the 16 MiB memory-backed /tmp: 20 large ones filled it.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with open(certifi.where()) as handle:  # any valid PEM bundle will do
        pem = handle.read()
    providers = [PrometheusProvider("https://prom:9090", 1, ca_pem=pem) for _ in range(20)]
    assert list(tmp_path.iterdir()) == []
    for provider in providers:
        await provider.aclose()
