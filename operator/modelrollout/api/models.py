"""Pydantic models of the ModelRollout resource (modelrollout.dev/v1alpha1).

These models are the single source of truth for the API: the CRD schema in
``crds/modelrollout.yaml`` is generated from them (``python -m modelrollout.api.crd``)
and a test proves the two agree. Field names are camelCase on the wire; the spec
forbids unknown fields so a typo is an error, not a silent default.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import durationpy
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

GROUP = "modelrollout.dev"
VERSION = "v1alpha1"
KIND = "ModelRollout"
PLURAL = "modelrollouts"
API_VERSION = f"{GROUP}/{VERSION}"

# Annotations used for manual control (kubectl annotate or the kubectl plugin).
ANNOTATION_COMMAND = f"{GROUP}/command"
ANNOTATION_COMMAND_BY = f"{GROUP}/command-by"


MAX_DURATION = timedelta(days=366)
"""Longest duration accepted anywhere in a spec: the engine adds durations to timestamps, and
one that runs past the year 9999 would fail every reconcile instead of being reported."""


MAX_OUTBOUND_TIMEOUT = "30s"
"""Longest ``timeout`` of a webhook or of Prometheus queries: each is the total deadline of one
outbound call (connecting and the whole answer), and a rollout's tick waits for its calls."""


def _check_duration(value: str) -> str:
    try:
        parsed = durationpy.from_str(value)
    except Exception as exc:  # durationpy raises a bare Exception subclass
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h30m") from exc
    if parsed < timedelta(0):
        raise ValueError(f"{value!r} is negative")
    if parsed > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than the 8784h (366 days) allowed")
    return value


Duration = Annotated[
    str,
    # Constraints before the validator: pydantic drops the pattern from the JSON schema (and so
    # from the CRD) when a Field follows an AfterValidator.
    Field(
        max_length=64,
        pattern=r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
        json_schema_extra={"x-duration": True},
    ),
    AfterValidator(_check_duration),
]
"""A Go-style duration string (``30s``, ``5m``, ``1h30m``) as Kubernetes users write it."""


def parse_duration(value: str) -> timedelta:
    """Turn a validated :data:`Duration` into a timedelta."""
    result: timedelta = durationpy.from_str(value)
    return result


def _rfc3339(value: datetime) -> str:
    """UTC with a trailing Z; a naive datetime is taken to be UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Time = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""An RFC 3339 timestamp in UTC, serialised with a trailing Z."""


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


Measurement = Annotated[float | None, AfterValidator(_finite_or_none)]
"""A measured value; NaN and infinities (no data, division by zero) become None, since JSON
cannot carry them and a status patch containing them would be refused."""

MAX_MESSAGE_CHARS = 1024
"""Longest text the operator stores in any status message, condition, reason or check result:
provider errors and joined check descriptions were unbounded (64 checks of 5,000-character
errors made a 2.95 MB status patch, refused by the apiserver and retried forever)."""


def cap_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` itself if it has at most ``limit`` characters; otherwise its head and a marker
    saying it was cut and how long it was (``limit`` characters in all). Idempotent."""
    if len(text) <= limit:
        return text
    marker = f" [... cut: {len(text)} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def _cap_optional(text: str | None) -> str | None:
    return None if text is None else cap_text(text)


Message = Annotated[str, PlainSerializer(cap_text, return_type=str, when_used="json")]
"""Text stored in the status, capped at :data:`MAX_MESSAGE_CHARS` when written (audit entries,
whose hashes cover their text, are capped when sealed instead: modelrollout.audit)."""
OptionalMessage = Annotated[
    str | None, PlainSerializer(_cap_optional, return_type=str | None, when_used="json")
]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# A list of named items is a map keyed by name for the apiserver: duplicates are refused and
# server-side apply merges items by name.
_LIST_MAP_BY_NAME: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}
StageName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]


class _Wire(BaseModel):
    """Base for every API object: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )


class _StatusWire(_Wire):
    """Status objects tolerate fields written by newer operator versions."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --------------------------------------------------------------------------- spec


class ModelIdentity(_Wire):
    """What is rolled out. Copied into every audit entry and injected into the pods."""

    name: str = Field(
        min_length=1,
        max_length=253,
        description="Model name, injected into the model server as env MODEL_NAME.",
    )
    version: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
        description=(
            "Model version. Changing it starts a new rollout; injected as env MODEL_VERSION "
            "and as the label modelrollout.dev/version."
        ),
    )
    uri: str = Field(
        min_length=1,
        max_length=2048,
        description=(
            "Where the model server loads the model from (env MODEL_URI), e.g. "
            "s3://models/fraud/2.4.0."
        ),
    )
    digest: str | None = Field(
        default=None,
        max_length=160,
        pattern=r"^[a-z0-9]+:[A-Fa-f0-9]{16,128}$",
        description=(
            "Optional content digest of the model artefact (e.g. sha256:...), env MODEL_DIGEST; "
            "recorded for audit."
        ),
    )


class ServiceSpec(_Wire):
    """The port the model server listens on; one Service per slot exposes it."""

    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Service port, also the container port when targetPort is unset.",
    )
    target_port: int | None = Field(
        default=None, ge=1, le=65535, description="Container port, when it differs from port."
    )


class GatewayAPIRouting(_Wire):
    """Route through a Gateway API HTTPRoute (gateway.networking.k8s.io/v1)."""

    http_route: str = Field(
        min_length=1,
        max_length=253,
        alias="httpRoute",
        description="Name of an existing HTTPRoute in the rollout's namespace.",
    )
    rule_index: int = Field(
        default=0,
        ge=0,
        le=15,
        description=(
            "Index of the rule in spec.rules whose backendRefs and RequestMirror filter the "
            "operator manages. Every other rule, match, filter, hostname and parentRef is left "
            "untouched."
        ),
    )


class IstioRouting(_Wire):
    """Route through an Istio VirtualService (networking.istio.io/v1beta1)."""

    virtual_service: str = Field(
        min_length=1,
        max_length=253,
        description="Name of an existing VirtualService in the rollout's namespace.",
    )
    route_name: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "Name of the http[] entry the operator manages (its route[] destinations and weights, "
            "mirror and mirrorPercentage). Defaults to the first entry."
        ),
    )


class ReplicaRatioRouting(_Wire):
    """No mesh: one shared Service selects both slots; weight is approximated by replica counts.

    Mirroring is impossible without a proxy, so stages with mirror > 0 are refused at validation.
    """


class TrafficRouting(_Wire):
    """How traffic reaches stable and candidate: set exactly one of gatewayAPI, istio, replicas."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI", description="Use a Gateway API HTTPRoute."
    )
    istio: IstioRouting | None = Field(default=None, description="Use an Istio VirtualService.")
    replicas: ReplicaRatioRouting | None = Field(
        default=None,
        description=(
            "No mesh: weights approximated by replica ratio behind one Service; no shadow stage."
        ),
    )

    @property
    def kind(self) -> Literal["gatewayAPI", "istio", "replicas"]:
        if self.gateway_api is not None:
            return "gatewayAPI"
        if self.istio is not None:
            return "istio"
        return "replicas"


class Stage(_Wire):
    """One step of the rollout."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "Stage name (DNS label), unique within the rollout; metrics select stages by it."
        ),
    )
    weight: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Percent of live traffic served by the candidate during this stage. Every stage gives "
            "the candidate more than the one before: a higher weight, or the same weight and a "
            "higher mirror (e.g. shadow-10 then shadow-100). The last stage has weight 100."
        ),
    )
    mirror: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Percent of live traffic copied to the candidate (shadow); its answers are discarded. "
            "Only with gatewayAPI or istio routing; 0 on the last stage. Every stage gives the "
            "candidate some traffic: weight > 0 or mirror > 0."
        ),
    )
    duration: Duration | None = Field(
        default=None,
        description=(
            "How long the stage lasts once the candidate is ready, e.g. 10m. Omitted on the last "
            "stage (weight 100), which promotes as soon as its analysis passes."
        ),
    )


def default_stages() -> list[Stage]:
    return [
        Stage(name="shadow", mirror=100, duration="10m"),
        Stage(name="canary-5", weight=5, duration="10m"),
        Stage(name="canary-25", weight=25, duration="20m"),
        Stage(name="full", weight=100),
    ]


class SecretKeyRef(_Wire):
    """A key in a Secret in the rollout's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class PrometheusAuth(_Wire):
    """Credentials for Prometheus, read from Secrets; never logged, never copied into status."""

    bearer_token: SecretKeyRef | None = Field(default=None, description="Bearer token.")
    username: SecretKeyRef | None = Field(default=None, description="Basic-auth user name.")
    password: SecretKeyRef | None = Field(default=None, description="Basic-auth password.")


class PrometheusTLS(_Wire):
    """TLS settings for Prometheus. Verification is on unless explicitly disabled."""

    ca: SecretKeyRef | None = Field(default=None, description="PEM CA bundle to verify the server.")
    insecure_skip_verify: bool = Field(
        default=False, description="Disable certificate verification (not for production)."
    )


class PrometheusSpec(_Wire):
    """Where the SLO metrics come from."""

    address: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of Prometheus; defaults to the operator's --prometheus-url.",
    )
    timeout: Duration | None = Field(
        default=None,
        description=(
            "Total deadline of each query (connecting and the whole answer), shorter than the "
            f"analysis interval and at most {MAX_OUTBOUND_TIMEOUT}. Default: 5s, or half the "
            "interval when that is shorter."
        ),
    )

    def effective_timeout(self, interval: str) -> str:
        """The timeout in force: as set, else 5s capped at half the analysis interval."""
        if self.timeout is not None:
            return self.timeout
        half = parse_duration(interval) / 2
        return "5s" if half >= timedelta(seconds=5) else f"{max(half.total_seconds(), 0.1):g}s"

    auth: PrometheusAuth | None = Field(default=None, description="Optional credentials.")
    tls: PrometheusTLS | None = Field(default=None, description="Optional TLS settings.")


class CompareTest(StrEnum):
    MANN_WHITNEY = "mann-whitney"


class Direction(StrEnum):
    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class CompareSpec(_Wire):
    """Candidate-vs-stable comparison (the Kayenta idea).

    The same query is evaluated over the analysis window for the candidate and the stable
    Service; the samples are compared with a one- or two-sided Mann-Whitney U test. The
    candidate fails when the test is significant at ``confidence`` *and* its median is worse
    than the stable's by more than ``tolerance`` (relative).
    """

    test: CompareTest = Field(default=CompareTest.MANN_WHITNEY, description="Statistical test.")
    direction: Direction = Field(
        default=Direction.INCREASE,
        description=(
            "Which change is bad: increase (e.g. latency), decrease (e.g. accuracy) or either."
        ),
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Confidence level of the test, e.g. 0.98."
    )
    tolerance: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description=(
            "Relative change of the median tolerated even when significant, e.g. 0.25 = 25%."
        ),
    )
    min_samples: int = Field(
        default=10, ge=3, le=10000, description="Fewer samples per side than this is Inconclusive."
    )
    window: Duration | None = Field(
        default=None,
        description="Range of the sample window; defaults to the time spent in the stage.",
    )
    step: Duration = Field(default="5s", description="Resolution of the range query.")


class MetricTemplate(StrEnum):
    ERROR_RATE = "error-rate"
    LATENCY_P50 = "latency-p50"
    LATENCY_P95 = "latency-p95"
    LATENCY_P99 = "latency-p99"
    PREDICTION_PSI = "prediction-psi"
    REQUEST_RATE = "request-rate"
    TRAFFIC_SPLIT = "traffic-split"


class MetricCheck(_Wire):
    """One SLO check, run at every analysis interval of the stages it applies to."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Check name (DNS label), unique within the rollout.",
    )
    template: MetricTemplate | None = Field(
        default=None,
        description=(
            "A built-in query: error-rate, latency-p50/p95/p99 (seconds), prediction-psi "
            "(candidate vs stable score distribution), request-rate. Exclusive with query."
        ),
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "PromQL. Variables in double braces are filled in and escaped: namespace, rollout, "
            "service (the Service under test), target (same), stable, candidate, stage, version, "
            "interval. Exclusive with template."
        ),
    )
    min: float | None = Field(
        default=None,
        description=(
            "Threshold check: the value must be >= min. A threshold check sets min, max or both "
            "(min below max); a comparison check (compare) sets neither."
        ),
    )
    max: float | None = Field(
        default=None,
        description=(
            "Threshold check: the value must be <= max. Required with the prediction-psi template; "
            "error-rate bounds are ratios between 0 and 1."
        ),
    )
    compare: CompareSpec | None = Field(
        default=None,
        description=(
            "Compare candidate and stable samples statistically instead of a fixed bound "
            "(exclusive with min and max; not with prediction-psi, which already compares)."
        ),
    )
    stages: list[StageName] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Names of the stages (from spec.stages) this check runs in; all stages when omitted."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class InconclusivePolicy(StrEnum):
    HOLD = "Hold"
    ROLLBACK = "Rollback"


TRAFFIC_CHECK_NAME: Final = "traffic-split"


class TrafficCheckSpec(_Wire):
    """Whether the traffic a stage asks for really reached the candidate, measured from the
    model servers' request counters per Service over the analysis window."""

    enabled: bool = Field(
        default=True,
        description=(
            "Add the check traffic-split to every stage with weight or mirror that has checks: "
            "Inconclusive when the candidate's observed share is off the stage's."
        ),
    )
    tolerance: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Allowed deviation, relative to the expected share (0.5: at 5% anything from 2.5% "
            "to 7.5%); never tighter than four binomial standard deviations at the count seen."
        ),
    )
    min_requests: int = Field(
        default=200,
        ge=1,
        le=100_000_000,
        description=(
            "Requests (both sides, over the window) needed to tell; fewer is too little to "
            "judge the split and counts as Successful."
        ),
    )


class AnalysisSpec(_Wire):
    """How the candidate is judged at every step."""

    interval: Duration = Field(default="1m", description="How often the checks run.")
    failure_limit: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Failed results tolerated per stage; the next one rolls back (0 = roll back on the "
            "first breach)."
        ),
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description=(
            "Inconclusive (no data, NaN, too few samples) results in a row before onInconclusive "
            "applies."
        ),
    )
    on_inconclusive: InconclusivePolicy = Field(
        default=InconclusivePolicy.HOLD,
        description="Hold (stay in the stage, Stalled condition, alert) or Rollback.",
    )
    error_limit: int = Field(
        default=5,
        ge=0,
        le=1000,
        description=(
            "Provider errors (unreachable, bad query) in a row before onInconclusive applies."
        ),
    )
    prometheus: PrometheusSpec = Field(
        default_factory=PrometheusSpec, description="Prometheus connection."
    )
    metrics: list[MetricCheck] = Field(
        default_factory=list,
        max_length=64,
        description="The checks; none means time-based stages only. Names are unique.",
        json_schema_extra=_LIST_MAP_BY_NAME,
    )
    traffic_check: TrafficCheckSpec = Field(
        default_factory=TrafficCheckSpec,
        description="Verify that each stage's traffic split really reached the candidate.",
    )


class WebhookType(StrEnum):
    PRE_ROLLOUT = "pre-rollout"
    CONFIRM_PROMOTION = "confirm-promotion"
    NOTIFY = "notify"
    AUDIT = "audit"


class WebhookSpec(_Wire):
    """A gate or a notification target."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Webhook name (DNS label), unique within the rollout.",
    )
    type: WebhookType = Field(
        description=(
            "pre-rollout: must answer 2xx before the candidate gets traffic; confirm-promotion: "
            "must answer 2xx before the last stage; notify: Slack-compatible message on stage "
            "change, promotion and rollback; audit: every audit entry as a CloudEvent."
        )
    )
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Target URL. Set exactly one of url and urlFrom.",
    )
    url_from: SecretKeyRef | None = Field(
        default=None,
        description="Target URL read from a Secret. Set exactly one of url and urlFrom.",
    )
    headers_from: SecretKeyRef | None = Field(
        default=None, description="A Secret key holding extra headers as a JSON object."
    )
    timeout: Duration = Field(
        default="10s",
        description=(
            "Total deadline of each attempt (connecting and the whole answer), at most "
            f"{MAX_OUTBOUND_TIMEOUT}; a gate is tried 3 times, a notification or audit event 4."
        ),
    )
    insecure_skip_verify: bool = Field(default=False, description="Disable TLS verification.")


class ModelRolloutSpec(_Wire):
    """Desired state: which model version should serve, and how to get there safely."""

    model: ModelIdentity = Field(description="The model version to roll out.")
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Replicas of the model server per version."
    )
    template: dict[str, Any] = Field(
        description=(
            "The model server's PodTemplateSpec. Its CRD schema is Kubernetes' own, generated "
            "from the OpenAPI definition (modelrollout.api.podtemplate_gen)."
        ),
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec, description="The model server's port."
    )
    traffic_routing: TrafficRouting = Field(
        description="How traffic reaches stable and candidate; exactly one router."
    )
    stages: list[Stage] = Field(
        default_factory=default_stages,
        min_length=1,
        max_length=20,
        json_schema_extra=_LIST_MAP_BY_NAME,
        description=(
            "The steps from first traffic to promotion. Names are unique, weights never decrease "
            "(equal weights need a higher mirror) and the last stage has weight 100. Default: "
            "shadow (mirror 100, 10m), canary-5 (10m), canary-25 (20m), full. The default's shadow "
            "stage needs gatewayAPI or istio routing."
        ),
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="SLO checks and the rollback decision."
    )
    webhooks: list[WebhookSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Gates and notifications. Names are unique.",
        json_schema_extra=_LIST_MAP_BY_NAME,
    )
    progress_deadline: Duration = Field(
        default="10m",
        description=(
            "How long the candidate may take to become ready before the rollout fails and rolls "
            "back."
        ),
    )
    paused: bool = Field(
        default=False, description="Hold the rollout where it is; traffic stays as it is."
    )


# --------------------------------------------------------------------------- status


class Phase(StrEnum):
    IDLE = "Idle"  # nothing to do yet (first observation)
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED})


class Verdict(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"


class ModelRef(_StatusWire):
    """A model version as recorded in status and audit entries."""

    name: str = Field(description="Model name (spec.model.name).")
    version: str = Field(description="Model version (spec.model.version).")
    uri: str = Field(description="Where the model server loaded the model from (spec.model.uri).")
    digest: str | None = Field(
        default=None, description="Content digest of the model artefact, when given."
    )


class StageStatus(_StatusWire):
    """The stage the rollout is in."""

    index: int = Field(description="Index into spec.stages.")
    name: str = Field(description="Name of the stage (spec.stages[index].name).")
    weight: int = Field(description="Candidate weight this stage asks for.")
    mirror: int = Field(
        default=0, description="Percent of live traffic this stage mirrors to the candidate."
    )
    started_at: Time | None = Field(default=None, description="When the stage was entered.")
    ready_at: Time | None = Field(
        default=None,
        description=(
            "When the candidate was ready and traffic was set; the duration counts from here."
        ),
    )
    candidate_ready_at: Time | None = Field(
        default=None,
        description=(
            "When the candidate was first seen ready in this stage; gates are called from then on."
        ),
    )
    gates_checked_at: Time | None = Field(
        default=None, description="When this stage's gate webhooks were last called."
    )


class Weights(_StatusWire):
    """Traffic as last set on the router."""

    stable: int = Field(
        default=100, description="Percent of live traffic served by the stable version."
    )
    candidate: int = Field(
        default=0, description="Percent of live traffic served by the candidate."
    )
    mirror: int = Field(
        default=0, description="Percent of live traffic copied to the candidate (shadow)."
    )
    actual_candidate: float | None = Field(
        default=None, description="Replica-ratio router only: candidate replicas / total replicas."
    )


class MetricResult(_StatusWire):
    """The outcome of one check at one analysis run."""

    name: str = Field(description="Check name (spec.analysis.metrics[].name).")
    verdict: Verdict = Field(
        description="Successful, Failed (a breach), Inconclusive (no data) or Error."
    )
    value: Measurement = Field(
        default=None, description="Measured value of the candidate; absent without data."
    )
    stable_value: Measurement = Field(
        default=None, description="Comparison checks: the stable's value (median)."
    )
    p_value: Measurement = Field(
        default=None, description="Comparison checks: p-value of the statistical test."
    )
    bound: str | None = Field(
        default=None, description="The bound or test the value was judged against."
    )
    query: str | None = Field(
        default=None,
        description=(
            "The PromQL that was run, variables filled in. History entries keep 1024 characters "
            "of it at most: a longer query ends with its length and SHA-256."
        ),
    )
    message: str | None = Field(
        default=None, description="Why the verdict, in words (e.g. the provider error)."
    )
    measured_at: Time | None = Field(default=None, description="When the value was measured.")


class AnalysisStatus(_StatusWire):
    """Analysis of the current stage: counters and the last results."""

    last_run_at: Time | None = Field(default=None, description="When the checks last ran.")
    runs: int = Field(default=0, description="Analysis runs in the current stage.")
    last_verdict: Verdict | None = Field(default=None, description="Worst verdict of the last run.")
    failures: int = Field(default=0, description="Failed results in the current stage.")
    inconclusive: int = Field(default=0, description="Inconclusive results in a row.")
    errors: int = Field(default=0, description="Provider errors in a row.")
    results: list[MetricResult] = Field(
        default_factory=list, description="The last result of every check."
    )


class Condition(_StatusWire):
    """A kstatus-compatible condition."""

    type: str = Field(description="Ready, Progressing or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason for the status.")
    message: Message = Field(default="", description="Human-readable details.")
    last_transition_time: Time | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed for."
    )


class HistoryEntry(_StatusWire):
    """One decision in the audit trail.

    ``hash`` chains entries so a gap or an edit is detectable.
    """

    time: Time = Field(description="When the decision was taken.")
    event: str = Field(
        description="StageEntered, AnalysisFailed, Promoted, RolledBack, Command, ..."
    )
    from_stage: str | None = Field(default=None, alias="from", description="Stage left, if any.")
    to_stage: str | None = Field(default=None, alias="to", description="Stage entered, if any.")
    reason: str = Field(default="", description="Why, in words.")
    model: ModelRef | None = Field(
        default=None, description="The candidate model the decision is about."
    )
    stable_version: str | None = Field(default=None, description="The stable version at the time.")
    metrics: list[MetricResult] = Field(
        default_factory=list, description="The results that led to it."
    )
    actor: str = Field(default="modelrollout-operator", description="Who or what decided.")
    seq: int = Field(
        default=0, description="Sequence number of the entry, counting from the first ever."
    )
    prev_hash: str | None = Field(default=None, description="hash of the previous entry.")
    hash: str | None = Field(default=None, description="Hash over this entry and prevHash.")


class ModelRolloutStatus(_StatusWire):
    """Observed state, written only by the operator. Everything needed to resume lives here."""

    phase: Phase = Field(
        default=Phase.IDLE,
        description="Idle, Progressing, Paused, Promoting, Succeeded, RolledBack or Failed.",
    )
    message: Message = Field(
        default="", description="What the rollout is doing or waiting for, in words."
    )
    stage: StageStatus | None = Field(
        default=None, description="The current stage, while rolling out."
    )
    weights: Weights = Field(
        default_factory=Weights, description="Traffic as last set on the router."
    )
    stable: ModelRef | None = Field(
        default=None, description="The model version serving as stable."
    )
    candidate: ModelRef | None = Field(
        default=None, description="The model version being rolled out."
    )
    stable_version: str | None = Field(
        default=None, description="stable.version, for printer columns."
    )
    candidate_version: str | None = Field(
        default=None, description="candidate.version, for printer columns."
    )
    stable_slot: Literal["a", "b"] | None = Field(
        default=None, description="Which Deployment slot (a or b) runs the stable version."
    )
    rollout_started_at: Time | None = Field(
        default=None, description="When the current rollout began."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    last_command: str | None = Field(default=None, description="The last manual command handled.")
    paused_at: Time | None = Field(
        default=None, description="When the rollout was paused; the stage clock stops."
    )
    paused_by: Literal["spec", "command"] | None = Field(
        default=None, description="Whether spec.paused or a pause command paused the rollout."
    )
    rollback_reason: OptionalMessage = Field(
        default=None, description="Why the last rollback happened."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing and Stalled (kstatus-compatible), one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    analysis: AnalysisStatus = Field(
        default_factory=AnalysisStatus, description="Analysis of the current stage."
    )
    history: list[HistoryEntry] = Field(
        default_factory=list, description="Bounded audit trail of decisions, oldest first."
    )


def _without_empty_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_without_empty_strings(v) for v in value]
    return value


def status_to_wire(status: ModelRolloutStatus) -> dict[str, Any]:
    """The JSON object the operator writes to ``.status``: camelCase, no None, no "".

    Empty strings are left out because the lab's apiserver (1.20.2; fixed upstream in 1.20.7)
    turns "" in a typed string field into null on every update and then refuses the write
    ("must be of type string: null"). Nothing is lost: the fields that default to "" read back
    as "". In a JSON merge patch, a key that is absent here but present in the stored status
    must be sent as null to clear it.
    """
    wire: dict[str, Any] = _without_empty_strings(
        status.model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    return wire


class ModelRollout(BaseModel):
    """A whole ModelRollout object as read from the apiserver."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelRolloutSpec
    status: ModelRolloutStatus = Field(default_factory=ModelRolloutStatus)
