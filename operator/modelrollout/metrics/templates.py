"""PromQL templates: built-in queries, and ``{{ variable }}`` rendering that cannot inject PromQL.

Variables are meant to be used **inside double-quoted label matchers**, e.g.
``service="{{ target }}"``. There the value is escaped (backslash, double quote, newline,
carriage return), so no object name can close the string and add PromQL of its own. Inside a
regex matcher (``=~"…"`` / ``!~"…"``) the value is also regex-quoted, so ``a.b`` matches only
``a.b``. Single-quoted and backtick strings are handled the same way (a backtick string cannot
escape, so a value containing a backtick is refused).

Outside a string only ``{{ interval }}`` may appear (e.g. ``rate(x[{{ interval }}])``): it is a
duration the operator formats itself (``60s``), never user text. Any other variable outside a
string is refused by :func:`validate_query`, so the problem shows up when the rollout is
validated, not at the first analysis run.

Variables: ``namespace``, ``rollout``, ``service`` and ``target`` (both: the Service under test),
``stable``, ``candidate`` (the two slot Services), ``stage``, ``version`` (the candidate's) and
``interval`` (the analysis interval, or the window for ``prediction-psi``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from modelrollout.api.models import MetricTemplate

VARIABLES: frozenset[str] = frozenset(
    {
        "namespace",
        "rollout",
        "service",
        "target",
        "stable",
        "candidate",
        "stage",
        "version",
        "interval",
    }
)
"""Every variable a query may use."""

UNQUOTED_VARIABLES: frozenset[str] = frozenset({"interval"})
"""Variables allowed outside a quoted string: only those the operator formats itself."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_REGEX_META = re.compile(r"([\\.+*?()|\[\]{}^$])")  # the characters Go's regexp.QuoteMeta escapes
_PROM_DURATION = re.compile(r"^[0-9]+(ms|s)$")


class TemplateError(ValueError):
    """A query template is malformed, uses an unknown variable, or a value cannot be placed."""


class _Context(Enum):
    CODE = "code"
    COMMENT = "comment"
    DOUBLE = '"'
    SINGLE = "'"
    RAW = "`"


@dataclass(frozen=True)
class _Placeholder:
    start: int
    end: int
    name: str
    context: _Context
    regex: bool  # inside the string operand of =~ or !~


def _scan(query: str) -> list[_Placeholder]:
    """Find every ``{{ name }}`` and the PromQL context (code, comment, string kind) it sits in."""
    found: list[_Placeholder] = []
    context = _Context.CODE
    regex = False
    i = 0
    while i < len(query):
        if query.startswith("{{", i):
            match = _PLACEHOLDER.match(query, i)
            if match is None:
                snippet = query[i : i + 30].split("\n")[0]
                raise TemplateError(
                    f"malformed placeholder at offset {i}: {snippet!r}; write {{{{ name }}}} "
                    f"with one of: {', '.join(sorted(VARIABLES))}"
                )
            found.append(_Placeholder(i, match.end(), match.group(1), context, regex))
            i = match.end()
            continue
        char = query[i]
        if context is _Context.CODE:
            if char in "\"'`":
                context = _Context(char)
                preceding = query[:i].rstrip()
                regex = preceding.endswith(("=~", "!~"))
            elif char == "#":
                context = _Context.COMMENT
        elif context is _Context.COMMENT:
            if char == "\n":
                context = _Context.CODE
        elif context is _Context.RAW:
            if char == "`":
                context = _Context.CODE
        else:  # a double- or single-quoted string
            if char == "\\":
                i += 2
                continue
            if char == context.value:
                context = _Context.CODE
        i += 1
    return found


def template_variables(query: str) -> set[str]:
    """The variable names in a query (:class:`TemplateError` on a malformed placeholder)."""
    return {p.name for p in _scan(query)}


def validate_query(query: str) -> None:
    """Refuse unknown variables and variables outside a quoted label value, with a clear message."""
    for placeholder in _scan(query):
        if placeholder.name not in VARIABLES:
            raise TemplateError(
                f"unknown variable {{{{ {placeholder.name} }}}} in query; known variables: "
                f"{', '.join(sorted(VARIABLES))}"
            )
        if placeholder.context in (_Context.CODE, _Context.COMMENT) and (
            placeholder.name not in UNQUOTED_VARIABLES
        ):
            raise TemplateError(
                f"variable {{{{ {placeholder.name} }}}} must be used inside a double-quoted label "
                f'value, e.g. service="{{{{ {placeholder.name} }}}}"; only {{{{ interval }}}} may '
                "stand outside quotes"
            )


def _escape(value: str, placeholder: _Placeholder) -> str:
    if placeholder.context in (_Context.CODE, _Context.COMMENT):
        # Only operator-formatted durations get here (validate_query refused the rest).
        if not _PROM_DURATION.match(value):
            raise TemplateError(
                f"value for {{{{ {placeholder.name} }}}} outside quotes must be a duration "
                f"such as 60s, got {value!r}"
            )
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TemplateError(
            f"value for {{{{ {placeholder.name} }}}} is not valid unicode: {value!r}"
        ) from exc
    if placeholder.regex:
        value = _REGEX_META.sub(r"\\\1", value)
    if placeholder.context is _Context.RAW:
        if "`" in value:
            raise TemplateError(
                f"value for {{{{ {placeholder.name} }}}} contains a backtick and cannot be "
                "placed in a `raw` string; use a double-quoted string"
            )
        return value
    quote = placeholder.context.value
    return (
        value.replace("\\", "\\\\")
        .replace(quote, "\\" + quote)
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def render(query: str, values: Mapping[str, str]) -> str:
    """Fill the variables of ``query`` from ``values``, escaped for where each one stands."""
    validate_query(query)
    placeholders = _scan(query)
    out: list[str] = []
    last = 0
    for placeholder in placeholders:
        if placeholder.name not in values:
            raise TemplateError(f"no value for variable {{{{ {placeholder.name} }}}}")
        out.append(query[last : placeholder.start])
        out.append(_escape(values[placeholder.name], placeholder))
        last = placeholder.end
    out.append(query[last:])
    return "".join(out)


def format_duration(value: timedelta) -> str:
    """A PromQL duration: whole seconds as ``60s``, otherwise milliseconds (``1500ms``)."""
    millis = round(value.total_seconds() * 1000)
    if millis <= 0:
        raise ValueError(f"a PromQL duration must be positive, got {value}")
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


# --------------------------------------------------------------------------- built-in queries

_SELECTOR = 'namespace="{{ namespace }}",service="{{ target }}"'


def _latency(quantile: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le) (rate(model_request_duration_seconds_bucket"
        f"{{{_SELECTOR}}}[{{{{ interval }}}}])))"
    )


BUILTIN_QUERIES: dict[MetricTemplate, str] = {
    # A server that never answered 5xx has no code="5.." series at all: "or vector(0)" makes that
    # a 0 instead of an empty result. No requests at all stays empty (or 0/0 = NaN): no data.
    MetricTemplate.ERROR_RATE: (
        f'(sum(rate(model_requests_total{{{_SELECTOR},code=~"5.."}}[{{{{ interval }}}}])) '
        "or vector(0))\n/\n"
        f"sum(rate(model_requests_total{{{_SELECTOR}}}[{{{{ interval }}}}]))"
    ),
    MetricTemplate.LATENCY_P50: _latency("0.5"),
    MetricTemplate.LATENCY_P95: _latency("0.95"),
    MetricTemplate.LATENCY_P99: _latency("0.99"),
    MetricTemplate.REQUEST_RATE: (
        f"sum(rate(model_requests_total{{{_SELECTOR}}}[{{{{ interval }}}}]))"
    ),
    # Requests one side answered over the window; judged against the other side's count.
    MetricTemplate.TRAFFIC_SPLIT: (
        f"sum(increase(model_requests_total{{{_SELECTOR}}}[{{{{ interval }}}}]))"
    ),
    # Cumulative bucket counts observed over the window (here {{ interval }} is the window),
    # one series per le; the PSI itself is computed from the candidate's and the stable's.
    MetricTemplate.PREDICTION_PSI: (
        f"sum by (le) (increase(model_prediction_score_bucket{{{_SELECTOR}}}[{{{{ interval }}}}]))"
    ),
}
"""The PromQL of each built-in template, evaluated once per side with ``target`` set."""
