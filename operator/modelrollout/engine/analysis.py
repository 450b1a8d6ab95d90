"""Folding one analysis run (or one round of gate calls) into the stage's counters.

Counters, per stage (reset when the stage changes):

* ``failures``: runs with a Failed result. More than ``failureLimit`` rolls back.
* ``errors``: runs in a row with an Error result (a run without one resets it).
* ``inconclusive``: runs in a row that were Inconclusive but neither Failed nor Error; reset
  by an all-Successful run. Gate timeouts count here too.

Past ``errorLimit`` / ``inconclusiveLimit`` the ``onInconclusive`` policy applies: Hold (stay,
Stalled) or Rollback. A check that was due but reported nothing is Inconclusive, never a pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from modelrollout.api.models import (
    AnalysisStatus,
    InconclusivePolicy,
    MetricCheck,
    MetricResult,
    ModelRolloutSpec,
    Verdict,
)

SEVERITY = {
    Verdict.SUCCESSFUL: 0,
    Verdict.INCONCLUSIVE: 1,
    Verdict.ERROR: 2,
    Verdict.FAILED: 3,
}

ANALYSIS_FAILED = "AnalysisFailed"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
ANALYSIS_ERROR = "AnalysisError"
GATE_TIMEOUT = "GateTimeout"


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=SEVERITY.__getitem__, default=Verdict.INCONCLUSIVE)


def fmt(value: float | None) -> str:
    return "no value" if value is None else f"{value:.6g}"


def describe(result: MetricResult) -> str:
    """``error-rate = 0.05 (bound <= 0.01)``, the words an operator wants in a rollback reason."""
    text = f"{result.name} = {fmt(result.value)}"
    if result.stable_value is not None:
        text += f" vs stable {fmt(result.stable_value)}"
    if result.bound:
        text += f" (bound {result.bound})"
    if result.message and result.verdict is not Verdict.FAILED:
        text += f": {result.message}"
    return text


@dataclass(frozen=True)
class Limit:
    """A counter went past its limit: what it means and what the policy says to do."""

    code: str  # AnalysisFailed | AnalysisInconclusive | AnalysisError | GateTimeout
    message: str
    rollback: bool
    first_time: bool  # the counter crossed the limit with this run (for events sent once)


@dataclass(frozen=True)
class RunOutcome:
    verdict: Verdict
    results: list[MetricResult]
    limit: Limit | None

    @property
    def failed(self) -> list[MetricResult]:
        return [r for r in self.results if r.verdict is Verdict.FAILED]


def complete_results(
    due: Sequence[MetricCheck], reported: Sequence[MetricResult], now: datetime
) -> list[MetricResult]:
    """One result per due check, in spec order; a due check without a result is Inconclusive.
    Results for checks that were not due are dropped."""
    by_name = {r.name: r for r in reported}
    return [
        by_name.get(check.name)
        or MetricResult(
            name=check.name,
            verdict=Verdict.INCONCLUSIVE,
            message="the check was due but no result was reported",
            measured_at=now,
        )
        for check in due
    ]


def record_run(
    spec: ModelRolloutSpec,
    analysis: AnalysisStatus,
    due: Sequence[MetricCheck],
    reported: Sequence[MetricResult],
    now: datetime,
) -> RunOutcome:
    """Fold a run into ``analysis`` (mutated) and say whether a limit was passed."""
    results = complete_results(due, reported, now)
    verdicts = [r.verdict for r in results]
    verdict = worst(verdicts)
    analysis.results = results
    analysis.last_run_at = now
    analysis.runs += 1
    analysis.last_verdict = verdict

    failed = Verdict.FAILED in verdicts
    errored = Verdict.ERROR in verdicts
    if failed:
        analysis.failures += 1
    analysis.errors = analysis.errors + 1 if errored else 0
    if verdict is Verdict.SUCCESSFUL:
        analysis.inconclusive = 0
    elif verdict is Verdict.INCONCLUSIVE:
        analysis.inconclusive += 1

    cfg = spec.analysis
    limit: Limit | None = None
    if failed and analysis.failures > cfg.failure_limit:
        breaches = "; ".join(describe(r) for r in results if r.verdict is Verdict.FAILED)
        limit = Limit(
            ANALYSIS_FAILED,
            f"analysis failed: {breaches} ({analysis.failures} failed run(s), "
            f"failureLimit {cfg.failure_limit})",
            rollback=True,
            first_time=True,
        )
    elif errored and analysis.errors > cfg.error_limit:
        detail = "; ".join(describe(r) for r in results if r.verdict is Verdict.ERROR)
        limit = _policy(
            spec,
            ANALYSIS_ERROR,
            f"analysis errors {analysis.errors} times in a row (errorLimit {cfg.error_limit}): "
            f"{detail}",
            first_time=analysis.errors == cfg.error_limit + 1,
        )
    elif verdict is Verdict.INCONCLUSIVE and analysis.inconclusive > cfg.inconclusive_limit:
        detail = "; ".join(describe(r) for r in results if r.verdict is Verdict.INCONCLUSIVE)
        limit = _policy(
            spec,
            ANALYSIS_INCONCLUSIVE,
            f"analysis inconclusive {analysis.inconclusive} times in a row (inconclusiveLimit "
            f"{cfg.inconclusive_limit}): {detail}",
            first_time=analysis.inconclusive == cfg.inconclusive_limit + 1,
        )
    return RunOutcome(verdict, results, limit)


def record_gate_round(
    spec: ModelRolloutSpec, analysis: AnalysisStatus, timed_out: Sequence[str]
) -> Limit | None:
    """Fold one round of gate calls that did not all open: a timeout counts as an inconclusive
    result; a round that merely stayed closed resets the streak."""
    if not timed_out:
        analysis.inconclusive = 0
        return None
    analysis.inconclusive += 1
    cfg = spec.analysis
    if analysis.inconclusive <= cfg.inconclusive_limit:
        return None
    return _policy(
        spec,
        GATE_TIMEOUT,
        f"gate {', '.join(timed_out)} timed out {analysis.inconclusive} times in a row "
        f"(inconclusiveLimit {cfg.inconclusive_limit})",
        first_time=analysis.inconclusive == cfg.inconclusive_limit + 1,
    )


def _policy(spec: ModelRolloutSpec, code: str, message: str, *, first_time: bool) -> Limit:
    rollback = spec.analysis.on_inconclusive is InconclusivePolicy.ROLLBACK
    return Limit(code, message, rollback=rollback, first_time=first_time)


def held(
    spec: ModelRolloutSpec, analysis: AnalysisStatus, gates: Sequence[str] = ()
) -> Limit | None:
    """The Hold the counters currently impose (policy Hold only), for conditions and messages.
    ``gates``: the gates the stage waits on before it gets traffic, if it does."""
    cfg = spec.analysis
    if cfg.on_inconclusive is not InconclusivePolicy.HOLD:
        return None
    if analysis.errors > cfg.error_limit:
        return Limit(
            ANALYSIS_ERROR,
            f"held: {analysis.errors} analysis errors in a row (errorLimit {cfg.error_limit}); "
            "waiting for a successful run",
            rollback=False,
            first_time=False,
        )
    if analysis.inconclusive > cfg.inconclusive_limit:
        what = f"timeouts of gate {', '.join(gates)}" if gates else "inconclusive analysis runs"
        return Limit(
            GATE_TIMEOUT if gates else ANALYSIS_INCONCLUSIVE,
            f"held: {analysis.inconclusive} {what} in a row (inconclusiveLimit "
            f"{cfg.inconclusive_limit}); waiting for "
            + ("an answer" if gates else "a successful run"),
            rollback=False,
            first_time=False,
        )
    return None
