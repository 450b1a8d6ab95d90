"""Template rendering: variables, escaping (no PromQL injection), validation errors."""

from __future__ import annotations

import ast
import re
from datetime import timedelta

import pytest

from modelrollout.api.models import MetricTemplate
from modelrollout.metrics.templates import (
    BUILTIN_QUERIES,
    VARIABLES,
    TemplateError,
    format_duration,
    render,
    template_variables,
    validate_query,
)

VALUES = {
    "namespace": "ml",
    "rollout": "fraud",
    "service": "fraud-b",
    "target": "fraud-b",
    "stable": "fraud-a",
    "candidate": "fraud-b",
    "stage": "canary-5",
    "version": "2.4.0",
    "interval": "60s",
}

HOSTILE = [
    'a"} or vector(1) or {x="',
    "a\\",
    'a\\"} or vector(1) or {x="',
    "line1\nline2",
    "cr\rlf",
    "ünï-cødé ✓ 模型",
    "{{ target }}",
    "",
    "a'b`c",
]


def _only_string_literal(rendered: str) -> str:
    """The one double-quoted literal in ``x{l="..."}``, decoded by Python's own unescaper
    (PromQL's escapes for \\\\, \\", \\n and \\r mean the same)."""
    match = re.fullmatch(r'x\{l=("(?:[^"\\\n]|\\.)*")\}', rendered)
    assert match, f"rendered query is not a single label matcher: {rendered!r}"
    decoded = ast.literal_eval(match.group(1))
    assert isinstance(decoded, str)
    return decoded


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_value_stays_inside_its_label_value(value: str) -> None:
    rendered = render('x{l="{{ target }}"}', {**VALUES, "target": value})
    assert _only_string_literal(rendered) == value
    assert "\n" not in rendered


def test_injection_attempt_is_escaped_literally() -> None:
    rendered = render('x{service="{{ target }}"}', {**VALUES, "target": 'a"} or vector(1) or {x="'})
    assert rendered == 'x{service="a\\"} or vector(1) or {x=\\""}'


def test_backslash_and_newline_escapes() -> None:
    assert render('x{l="{{ stage }}"}', {**VALUES, "stage": "a\\b\nc"}) == 'x{l="a\\\\b\\nc"}'


def test_unicode_passes_through() -> None:
    assert render('x{l="{{ version }}"}', {**VALUES, "version": "模型-✓"}) == 'x{l="模型-✓"}'


def test_regex_matcher_value_is_regex_quoted() -> None:
    rendered = render('x{l=~"{{ target }}"}', {**VALUES, "target": "a.b|c"})
    # regex-quoted (a\.b\|c), then each backslash escaped for the string literal
    assert rendered == 'x{l=~"a\\\\.b\\\\|c"}'
    negative = render('x{l !~ "{{ target }}"}', {**VALUES, "target": "a.b"})
    assert negative == 'x{l !~ "a\\\\.b"}'


def test_single_quoted_string_escapes_single_quote() -> None:
    assert render("x{l='{{ target }}'}", {**VALUES, "target": "it's"}) == "x{l='it\\'s'}"


def test_raw_string_refuses_a_backtick_value() -> None:
    assert render("x{l=`{{ target }}`}", {**VALUES, "target": 'a"b\\'}) == 'x{l=`a"b\\`}'
    with pytest.raises(TemplateError, match="backtick"):
        render("x{l=`{{ target }}`}", {**VALUES, "target": "a`b"})


def test_escaped_quote_in_template_does_not_end_the_string() -> None:
    rendered = render('x{l="pre\\"{{ target }}"}', {**VALUES, "target": 'q"'})
    assert rendered == 'x{l="pre\\"q\\""}'


def test_interval_may_stand_outside_quotes() -> None:
    assert render("rate(x[{{ interval }}])", VALUES) == "rate(x[60s])"
    assert render("rate(x[{{interval}}])", VALUES) == "rate(x[60s])"


def test_interval_outside_quotes_must_be_a_duration() -> None:
    with pytest.raises(TemplateError, match="duration"):
        render("rate(x[{{ interval }}])", {**VALUES, "interval": "1m] or vector(1) or x[1m"})


@pytest.mark.parametrize(
    "query",
    [
        "x{l={{ target }}}",  # not quoted
        "sum(x) by ({{ namespace }})",
        "x # {{ rollout }}",  # in a comment: a newline in the value would end it
    ],
)
def test_other_variables_outside_quotes_are_refused(query: str) -> None:
    with pytest.raises(TemplateError, match="inside a double-quoted label value"):
        validate_query(query)


def test_unknown_variable_is_named_with_the_known_ones() -> None:
    with pytest.raises(TemplateError) as err:
        validate_query('x{l="{{ servce }}"}')
    assert "servce" in str(err.value)
    assert "service" in str(err.value) and "interval" in str(err.value)


@pytest.mark.parametrize("query", ['x{l="{{ foo-bar }}"}', 'x{l="{{}}"}', 'x{l="{{ target }"}'])
def test_malformed_placeholder(query: str) -> None:
    with pytest.raises(TemplateError, match="malformed placeholder"):
        template_variables(query)


def test_template_variables() -> None:
    query = 'a{n="{{ namespace }}",s="{{target}}"}[{{ interval }}] / b{s="{{ target }}"}'
    assert template_variables(query) == {"namespace", "target", "interval"}
    assert template_variables("up") == set()


def test_missing_value_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no value for variable"):
        render('x{l="{{ stage }}"}', {"target": "x"})


def test_error_rate_template_renders_exactly() -> None:
    rendered = render(BUILTIN_QUERIES[MetricTemplate.ERROR_RATE], VALUES)
    assert rendered == (
        '(sum(rate(model_requests_total{namespace="ml",service="fraud-b",code=~"5.."}[60s])) '
        "or vector(0))\n/\n"
        'sum(rate(model_requests_total{namespace="ml",service="fraud-b"}[60s]))'
    )


def test_latency_template_renders_exactly() -> None:
    rendered = render(BUILTIN_QUERIES[MetricTemplate.LATENCY_P99], VALUES)
    assert rendered == (
        "histogram_quantile(0.99, sum by (le) (rate(model_request_duration_seconds_bucket"
        '{namespace="ml",service="fraud-b"}[60s])))'
    )


@pytest.mark.parametrize("template", list(MetricTemplate))
def test_every_builtin_is_valid(template: MetricTemplate) -> None:
    query = BUILTIN_QUERIES[template]
    validate_query(query)
    assert template_variables(query) <= VARIABLES
    assert "target" in template_variables(query)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(minutes=1), "60s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=1.5), "1500ms"),
        (timedelta(hours=2), "7200s"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


def test_format_duration_refuses_zero() -> None:
    with pytest.raises(ValueError, match="positive"):
        format_duration(timedelta(0))
