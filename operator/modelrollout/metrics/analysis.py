"""Run a stage's checks against a metric provider and turn the outcomes into MetricResults.

The reconciler calls :func:`run_checks` once per analysis interval. Three kinds of check:

* threshold (``min``/``max``): one instant query for the candidate Service (a built-in
  template rates over the time since the stage became ready, clamped to between one and
  :data:`RATE_WINDOW_INTERVALS` analysis intervals, see :func:`rate_window`);
* comparison (``compare``): the same query as a range query over the analysis window for the
  candidate and the stable Service, compared with Mann-Whitney U;
* drift (``template: prediction-psi``): the candidate's and the stable's prediction-score
  histograms over the window, compared with the population stability index against ``max``.

The window is ``compare.window`` when set, otherwise the time since the stage became ready,
and never shorter than the analysis interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelrollout.api.models import (
    MetricCheck,
    MetricResult,
    MetricTemplate,
    TrafficCheckSpec,
    Verdict,
    cap_text,
    parse_duration,
)
from modelrollout.audit import compact_query
from modelrollout.metrics.base import MetricProvider, ProviderError, VectorProvider
from modelrollout.metrics.templates import (
    BUILTIN_QUERIES,
    TemplateError,
    format_duration,
    render,
    validate_query,
)
from modelrollout.metrics.traffic import count, judge_traffic, traffic_bound
from modelrollout.metrics.verdicts import (
    Judgement,
    compare_bound,
    judge_comparison,
    judge_drift,
    judge_threshold,
    threshold_bound,
)

MAX_RANGE_POINTS = 10_000
"""Prometheus refuses range queries of more than 11,000 points per series; stay below."""

RATE_WINDOW_INTERVALS = 2
"""At most this many analysis intervals in a built-in threshold template's rate window."""


@dataclass(frozen=True)
class QueryContext:
    """What the query variables are filled from."""

    namespace: str
    rollout: str
    stable_service: str
    candidate_service: str
    stage: str
    version: str  # the candidate's model version
    interval: timedelta  # the analysis interval
    # What the stage sends the candidate, in percent of live traffic (traffic-split check)
    weight: float = 0
    mirror: float = 0
    traffic: TrafficCheckSpec = field(default_factory=TrafficCheckSpec)

    def variables(self, target: str, interval: timedelta | None = None) -> dict[str, str]:
        """Template variables with ``target``/``service`` set to the side under test."""
        return {
            "namespace": self.namespace,
            "rollout": self.rollout,
            "service": target,
            "target": target,
            "stable": self.stable_service,
            "candidate": self.candidate_service,
            "stage": self.stage,
            "version": self.version,
            "interval": format_duration(interval or self.interval),
        }


def check_query(check: MetricCheck) -> str:
    """The PromQL template of a check (its built-in template or its own query)."""
    if check.template is not None:
        return BUILTIN_QUERIES[check.template]
    if check.query is not None:
        return check.query
    raise ValueError(f"check {check.name!r}: set either template or query")


def validate_check(check: MetricCheck) -> None:
    """Refuse a check that cannot run, with a message naming the check and the problem."""
    name = check.name
    if (check.template is None) == (check.query is None):
        raise ValueError(f"check {name!r}: set exactly one of template or query")
    if check.compare is not None:
        if check.min is not None or check.max is not None:
            raise ValueError(f"check {name!r}: compare and min/max are exclusive")
        if check.template is MetricTemplate.PREDICTION_PSI:
            raise ValueError(
                f"check {name!r}: prediction-psi already compares candidate and stable; "
                "judge it with max (e.g. max: 0.2), not compare"
            )
    elif check.template is MetricTemplate.TRAFFIC_SPLIT:
        if check.min is not None or check.max is not None:
            raise ValueError(
                f"check {name!r}: traffic-split is judged against the stage's weight and "
                "mirror (spec.analysis.trafficCheck), not min/max"
            )
    elif check.min is None and check.max is None:
        raise ValueError(f"check {name!r}: set min, max or compare")
    if check.min is not None and check.max is not None and check.min > check.max:
        raise ValueError(f"check {name!r}: min {check.min} is greater than max {check.max}")
    try:
        validate_query(check_query(check))
    except TemplateError as exc:
        raise ValueError(f"check {name!r}: {exc}") from exc


def applies_to_stage(check: MetricCheck, stage: str) -> bool:
    """A check without ``stages`` runs in every stage."""
    return check.stages is None or stage in check.stages


def analysis_window(
    now: datetime,
    stage_ready_at: datetime | None,
    interval: timedelta,
    explicit: timedelta | None = None,
) -> timedelta:
    """``explicit`` if given, else the time since the stage was ready, at least ``interval``."""
    if explicit is not None:
        return explicit
    if stage_ready_at is None:
        return interval
    return max(now - stage_ready_at, interval)


def rate_window(now: datetime, stage_ready_at: datetime | None, interval: timedelta) -> timedelta:
    """The ``{{ interval }}`` of a built-in threshold template: the time since the stage became
    ready, at least one analysis interval and at most :data:`RATE_WINDOW_INTERVALS`.

    Over exactly one interval, consecutive runs' windows only abut, and the increase between the
    last scrape of one window and the first of the next falls in neither: at a 2s interval over
    1s scrapes half of the requests are never looked at, and a rare 5xx shows in Prometheus and
    is gone before the next run. Over two, windows overlap, so every scrape-to-scrape increase is
    seen by a run (when scrapes are at least as frequent as runs). Never reaching back before the
    stage keeps a stage's verdicts about its own traffic (e.g. not the shadow's mirrored requests
    in the first canary run when the check skips shadow).
    """
    since_ready = analysis_window(now, stage_ready_at, interval)
    return min(since_ready, interval * RATE_WINDOW_INTERVALS)


def _range_step(window: timedelta, step: timedelta) -> float:
    return max(step.total_seconds(), window.total_seconds() / MAX_RANGE_POINTS)


async def _judge(
    check: MetricCheck,
    ctx: QueryContext,
    provider: MetricProvider,
    now: datetime,
    stage_ready_at: datetime | None,
) -> tuple[Judgement, str, str]:
    """(judgement, bound text, the candidate's rendered query)."""
    template = check_query(check)
    candidate_vars = ctx.variables(ctx.candidate_service)
    stable_vars = ctx.variables(ctx.stable_service)

    if check.compare is not None:
        spec = check.compare
        explicit = parse_duration(spec.window) if spec.window else None
        window = analysis_window(now, stage_ready_at, ctx.interval, explicit)
        step = _range_step(window, parse_duration(spec.step))
        cand_query, stab_query = render(template, candidate_vars), render(template, stable_vars)
        start = now - window
        cand, stab = await asyncio.gather(
            provider.query_range(cand_query, start, now, step),
            provider.query_range(stab_query, start, now, step),
        )
        return judge_comparison(cand, stab, spec), compare_bound(spec), cand_query

    if check.template is MetricTemplate.TRAFFIC_SPLIT:
        return await _judge_traffic(template, ctx, provider, now, stage_ready_at)

    bound = threshold_bound(check.min, check.max)
    if check.template is MetricTemplate.PREDICTION_PSI:
        window = analysis_window(now, stage_ready_at, ctx.interval)
        cand_query = render(template, ctx.variables(ctx.candidate_service, window))
        stab_query = render(template, ctx.variables(ctx.stable_service, window))
        if not isinstance(provider, VectorProvider):
            message = "the metric provider cannot return several series (needed for prediction-psi)"
            return Judgement(Verdict.ERROR, message), bound, cand_query
        cand_vec, stab_vec = await asyncio.gather(
            provider.query_vector(cand_query, now), provider.query_vector(stab_query, now)
        )
        return judge_drift(cand_vec, stab_vec, check.min, check.max), f"PSI {bound}", cand_query

    own_window = rate_window(now, stage_ready_at, ctx.interval) if check.template else None
    cand_query = render(template, ctx.variables(ctx.candidate_service, own_window))
    outcome = await provider.query(cand_query, now)
    return judge_threshold(outcome, check.min, check.max), bound, cand_query


async def _judge_traffic(
    template: str,
    ctx: QueryContext,
    provider: MetricProvider,
    now: datetime,
    stage_ready_at: datetime | None,
) -> tuple[Judgement, str, str]:
    """Requests each side answered over the stage's own window, against the stage's split."""
    window = rate_window(now, stage_ready_at, ctx.interval)
    cand_query = render(template, ctx.variables(ctx.candidate_service, window))
    stab_query = render(template, ctx.variables(ctx.stable_service, window))
    outcomes = await asyncio.gather(
        provider.query(cand_query, now), provider.query(stab_query, now)
    )
    candidate, stable = (count(o) for o in outcomes)
    bound = traffic_bound(ctx.weight, ctx.mirror, ctx.traffic)
    for side in (candidate, stable):
        if isinstance(side, ProviderError):
            return Judgement(Verdict.ERROR, f"provider error: {side.reason}"), bound, cand_query
    assert isinstance(candidate, float) and isinstance(stable, float)
    judged = judge_traffic(candidate, stable, ctx.weight, ctx.mirror, ctx.traffic)
    return judged, bound, cand_query


async def run_check(
    check: MetricCheck,
    ctx: QueryContext,
    provider: MetricProvider,
    now: datetime,
    stage_ready_at: datetime | None,
) -> MetricResult:
    """Run one check; an invalid check becomes an Error result naming the problem."""
    try:
        validate_check(check)
        judgement, bound, query = await _judge(check, ctx, provider, now, stage_ready_at)
    except ValueError as exc:  # includes TemplateError
        return MetricResult(
            name=check.name, verdict=Verdict.ERROR, message=cap_text(str(exc)), measured_at=now
        )
    # Stored in status: the query as audit entries keep it, the message capped (a provider's
    # error text is as long as the provider makes it).
    return MetricResult(
        name=check.name,
        verdict=judgement.verdict,
        value=judgement.value,
        stable_value=judgement.stable_value,
        p_value=judgement.p_value,
        bound=bound,
        query=compact_query(query),
        message=None if judgement.message is None else cap_text(judgement.message),
        measured_at=now,
    )


async def run_checks(
    checks: Iterable[MetricCheck],
    ctx: QueryContext,
    provider: MetricProvider,
    now: datetime,
    stage_ready_at: datetime | None,
) -> list[MetricResult]:
    """Run, concurrently, the checks that apply to ``ctx.stage``; one result per such check, in
    the order given. Checks whose ``stages`` exclude the current stage are skipped (no result)."""
    selected = [c for c in checks if applies_to_stage(c, ctx.stage)]
    return list(
        await asyncio.gather(*(run_check(c, ctx, provider, now, stage_ready_at) for c in selected))
    )
