"""Route parsing, rule selection, weighted choice and mirror shares of the lab gateway."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.lab.routes import (
    Backend,
    Mirror,
    Request,
    RouteError,
    RouteKind,
    mirror_percent_gateway,
    mirror_percent_istio,
    parse_httproute,
    parse_istio_host,
    parse_virtualservice,
    should_mirror,
    weighted_choice,
)

GRID = [i / 10_000 for i in range(10_000)]  # evenly spread "random" numbers in [0, 1)


def httproute(rules: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ml",
            "name": "r",
            "generation": 3,
            "resourceVersion": "42",
            **meta,
        },
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules},
    }


def vs(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": "v"}, "spec": {"hosts": ["m"], "http": http}}


def shares(backends: tuple[Backend, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in GRID:
        b = weighted_choice(backends, r)
        key = b.service if b else "-"
        out[key] = out.get(key, 0) + 1
    return out


class TestWeightedChoice:
    def test_split_follows_weights_exactly_on_an_even_grid(self) -> None:
        backends = (Backend("a", "ml", 90), Backend("b", "ml", 10))
        assert shares(backends) == {"a": 9000, "b": 1000}

    def test_zero_weight_backend_never_chosen(self) -> None:
        backends = (Backend("a", "ml", 0), Backend("b", "ml", 3), Backend("c", "ml", 1))
        assert shares(backends) == {"b": 7500, "c": 2500}

    def test_all_zero_or_empty_gives_none(self) -> None:
        assert weighted_choice((Backend("a", "ml", 0),), 0.5) is None
        assert weighted_choice((), 0.5) is None

    def test_r_at_upper_edge_still_returns_a_positive_weight_backend(self) -> None:
        backends = (Backend("a", "ml", 1), Backend("b", "ml", 0))
        assert weighted_choice(backends, 1.0) == backends[0]


class TestMirrorShares:
    @pytest.mark.parametrize(
        ("mirror", "expected"),
        [
            ({"backendRef": {"name": "c"}}, 100.0),
            ({"backendRef": {"name": "c"}, "percent": 25}, 25.0),
            ({"backendRef": {"name": "c"}, "percent": 0}, 0.0),
            ({"backendRef": {"name": "c"}, "fraction": {"numerator": 1, "denominator": 8}}, 12.5),
            ({"backendRef": {"name": "c"}, "fraction": {"numerator": 5}}, 5.0),
        ],
    )
    def test_gateway_percent_and_fraction(self, mirror: dict[str, Any], expected: float) -> None:
        assert mirror_percent_gateway(mirror) == expected

    @pytest.mark.parametrize(
        ("mirror", "message"),
        [
            ({"percent": 10, "fraction": {"numerator": 1}}, "not both"),
            ({"percent": 101}, r"percent must be in \[0, 100\]"),
            ({"fraction": {"numerator": 3, "denominator": 2}}, "numerator must be in"),
            ({"fraction": {"numerator": 1, "denominator": 0}}, "denominator must be >= 1"),
            ({"fraction": {}}, "numerator is required"),
            ({"percent": "ten"}, "percent must be an integer"),
        ],
    )
    def test_gateway_bad_values_are_named(self, mirror: dict[str, Any], message: str) -> None:
        with pytest.raises(RouteError, match=message):
            mirror_percent_gateway(mirror)

    def test_istio_percentage_legacy_and_default(self) -> None:
        assert mirror_percent_istio({"mirror": {"host": "c"}}) == 100.0
        assert mirror_percent_istio({"mirrorPercentage": {"value": 2.5}}) == 2.5
        assert mirror_percent_istio({"mirrorPercent": 30}) == 30.0
        # mirrorPercentage wins over the deprecated field
        assert mirror_percent_istio({"mirrorPercentage": {"value": 1}, "mirrorPercent": 30}) == 1.0
        with pytest.raises(RouteError, match=r"mirrorPercentage.value must be in \[0, 100\]"):
            mirror_percent_istio({"mirrorPercentage": {"value": 150}})

    def test_should_mirror_matches_the_percent_on_an_even_grid(self) -> None:
        m = Mirror("c", "ml", 12.5)
        assert sum(should_mirror(m, r) for r in GRID) == 1250
        assert not any(should_mirror(Mirror("c", "ml", 0.0), r) for r in GRID)
        assert all(should_mirror(Mirror("c", "ml", 100.0), r) for r in GRID)


class TestHTTPRoute:
    def test_backends_weights_default_and_metadata(self) -> None:
        table = parse_httproute(
            httproute([{"backendRefs": [{"name": "s", "port": 80}, {"name": "c", "weight": 0}]}])
        )
        assert table.kind is RouteKind.HTTPROUTE
        assert (table.namespace, table.name, table.generation, table.resource_version) == (
            "ml",
            "r",
            3,
            "42",
        )
        (rule,) = table.rules
        assert [(b.service, b.namespace, b.weight, b.port) for b in rule.backends] == [
            ("s", "ml", 1, 80),
            ("c", "ml", 0, None),
        ]

    def test_mirror_filter_and_header_modifier(self) -> None:
        table = parse_httproute(
            httproute(
                [
                    {
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": {"name": "c", "namespace": "other", "port": 8080},
                                    "fraction": {"numerator": 1, "denominator": 4},
                                },
                            },
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "X-Env", "value": "lab"}],
                                    "remove": ["x-drop"],
                                },
                            },
                            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {}},
                        ],
                        "backendRefs": [{"name": "s", "weight": 100}],
                    }
                ]
            )
        )
        (rule,) = table.rules
        assert rule.mirrors == (Mirror("c", "other", 25.0, 8080),)
        assert rule.headers.apply({"x-drop": "1", "a": "b"}) == {"a": "b", "x-env": "lab"}

    def test_non_service_backend_is_marked_invalid(self) -> None:
        (rule,) = parse_httproute(
            httproute([{"backendRefs": [{"name": "x", "kind": "Bucket", "group": "s3.io"}]}])
        ).rules
        assert rule.backends[0].invalid is not None
        assert "Bucket" in rule.backends[0].invalid

    def test_errors_name_the_field(self) -> None:
        with pytest.raises(
            RouteError, match=r"HTTPRoute ml/r: spec.rules\[0\].backendRefs\[1\].weight"
        ):
            parse_httproute(
                httproute([{"backendRefs": [{"name": "a"}, {"name": "b", "weight": -1}]}])
            )
        with pytest.raises(RouteError, match=r"rules\[0\].filters\[0\].requestMirror is required"):
            parse_httproute(httproute([{"filters": [{"type": "RequestMirror"}]}]))
        with pytest.raises(RouteError, match=r"matches\[0\].path.value is not a valid regular"):
            parse_httproute(
                httproute([{"matches": [{"path": {"type": "RegularExpression", "value": "("}}]}])
            )

    def test_timeout_is_parsed(self) -> None:
        (rule,) = parse_httproute(httproute([{"timeouts": {"request": "1m500ms"}}])).rules
        assert rule.timeout_s == 60.5
        with pytest.raises(RouteError, match=r"timeouts\.request must be a duration"):
            parse_httproute(httproute([{"timeouts": {"request": "soon"}}]))

    def test_missing_rules_mean_one_catch_all_rule(self) -> None:
        table = parse_httproute({"metadata": {"namespace": "ml", "name": "r"}, "spec": {}})
        assert len(table.rules) == 1
        assert table.select(Request(path="/anything")) == table.rules[0]


class TestRuleSelection:
    def table(self) -> Any:
        return parse_httproute(
            httproute(
                [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
                    {
                        "matches": [
                            {"path": {"type": "PathPrefix", "value": "/predict"}},
                        ]
                    },
                    {
                        "matches": [
                            {
                                "path": {"type": "PathPrefix", "value": "/predict"},
                                "headers": [{"name": "X-Canary", "value": "yes"}],
                            }
                        ]
                    },
                    {"matches": [{"path": {"type": "Exact", "value": "/predict/v2"}}]},
                    {"matches": [{"path": {"value": "/admin"}, "method": "GET"}]},
                ]
            )
        )

    @pytest.mark.parametrize(
        ("request_", "rule"),
        [
            (Request(path="/other"), 0),
            (Request(path="/predict"), 1),
            (Request(path="/predict?x=1"), 1),
            (Request(path="/predictions"), 0),  # PathPrefix is element-wise
            (Request(path="/predict/a"), 1),
            (Request(path="/predict", headers={"x-canary": "yes"}), 2),  # more headers win
            (Request(path="/predict/v2", headers={"x-canary": "yes"}), 3),  # Exact beats prefix
            (Request(path="/admin", method="GET"), 4),
            (Request(path="/admin", method="POST"), 0),
        ],
    )
    def test_gateway_api_precedence(self, request_: Request, rule: int) -> None:
        selected = self.table().select(request_)
        assert selected is not None
        assert selected.index == rule

    def test_istio_first_matching_entry_wins(self) -> None:
        table = parse_virtualservice(
            vs(
                [
                    {
                        "name": "canary",
                        "match": [{"headers": {"X-Canary": {"exact": "yes"}}}],
                        "route": [{"destination": {"host": "c"}}],
                    },
                    {
                        "name": "api",
                        "match": [{"uri": {"prefix": "/pred"}}],
                        "route": [{"destination": {"host": "s"}}],
                    },
                    {"name": "rest", "route": [{"destination": {"host": "s"}}]},
                ]
            )
        )
        pick = table.select
        assert pick(Request(headers={"x-canary": "yes"})).name == "canary"  # type: ignore[union-attr]
        assert pick(Request(path="/predictions")).name == "api"  # type: ignore[union-attr]
        assert pick(Request(path="/x")).name == "rest"  # type: ignore[union-attr]

    def test_no_match_gives_none(self) -> None:
        table = parse_virtualservice(
            vs([{"match": [{"uri": {"exact": "/a"}}], "route": [{"destination": {"host": "s"}}]}])
        )
        assert table.select(Request(path="/b")) is None


class TestVirtualService:
    def test_weights_mirror_and_mirrors(self) -> None:
        table = parse_virtualservice(
            vs(
                [
                    {
                        "route": [
                            {"destination": {"host": "s", "port": {"number": 8080}}, "weight": 95},
                            {"destination": {"host": "c.ml.svc.cluster.local"}, "weight": 5},
                        ],
                        "mirror": {"host": "shadow.other"},
                        "mirrorPercentage": {"value": 50.0},
                        "mirrors": [{"destination": {"host": "m2"}}],
                        "timeout": "2s",
                        "headers": {"request": {"set": {"x-a": "1"}}},
                    }
                ]
            )
        )
        (rule,) = table.rules
        assert [(b.service, b.namespace, b.weight, b.port) for b in rule.backends] == [
            ("s", "ml", 95, 8080),
            ("c", "ml", 5, None),
        ]
        assert rule.mirrors == (Mirror("shadow", "other", 50.0), Mirror("m2", "ml", 100.0))
        assert rule.timeout_s == 2.0
        assert rule.headers.apply({}) == {"x-a": "1"}

    def test_single_destination_takes_all_traffic_whatever_its_weight(self) -> None:
        (rule,) = parse_virtualservice(vs([{"route": [{"destination": {"host": "s"}}]}])).rules
        assert weighted_choice(rule.backends, 0.99) == rule.backends[0]

    def test_missing_weights_with_several_destinations_are_zero(self) -> None:
        (rule,) = parse_virtualservice(
            vs(
                [
                    {
                        "route": [
                            {"destination": {"host": "s"}},
                            {"destination": {"host": "c"}, "weight": 100},
                        ]
                    }
                ]
            )
        ).rules
        assert shares(rule.backends) == {"c": 10_000}

    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("s", ("s", "ml")),
            ("s.other", ("s", "other")),
            ("s.other.svc", ("s", "other")),
            ("s.other.svc.cluster.local", ("s", "other")),
        ],
    )
    def test_host_forms(self, host: str, expected: tuple[str, str]) -> None:
        assert parse_istio_host(host, "ml", "h") == expected

    @pytest.mark.parametrize("host", ["example.com.au", "a..b", "", "s.ns.svc.other.zone"])
    def test_external_hosts_are_refused(self, host: str) -> None:
        with pytest.raises(RouteError):
            parse_istio_host(host, "ml", "h")

    def test_errors_name_the_field(self) -> None:
        with pytest.raises(RouteError, match=r"http\[0\].route\[0\].destination.host is required"):
            parse_virtualservice(vs([{"route": [{"destination": {}}]}]))
        with pytest.raises(RouteError, match=r"match\[0\].uri must set exactly one"):
            parse_virtualservice(vs([{"match": [{"uri": {"exact": "/", "prefix": "/"}}]}]))


def test_kind_parse() -> None:
    assert RouteKind.parse("HTTPRoute") is RouteKind.HTTPROUTE
    assert RouteKind.parse("virtualservices") is RouteKind.VIRTUALSERVICE
    with pytest.raises(RouteError, match="httproute or virtualservice"):
        RouteKind.parse("ingress")
