"""Pydantic models of the ModelRollout resource (modelrollout.dev/v1alpha1).

These models are the single source of truth for the API: the CRD schema in
``crds/modelrollout.yaml`` is generated from them (``python -m modelrollout.api.crd``)
and a test proves the two agree. Field names are camelCase on the wire; the spec
forbids unknown fields so a typo is an error, not a silent default.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import durationpy
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
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


def _check_duration(value: str) -> str:
    try:
        parsed = durationpy.from_str(value)
    except Exception as exc:  # durationpy raises a bare Exception subclass
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h30m") from exc
    if parsed < timedelta(0):
        raise ValueError(f"{value!r} is negative")
    return value


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(
        pattern=r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
        json_schema_extra={"x-duration": True},
    ),
]
"""A Go-style duration string (``30s``, ``5m``, ``1h30m``) as Kubernetes users write it."""


def parse_duration(value: str) -> timedelta:
    """Turn a validated :data:`Duration` into a timedelta."""
    result: timedelta = durationpy.from_str(value)
    return result


Time = Annotated[
    datetime,
    PlainSerializer(lambda v: v.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if v else None, return_type=str),
]
"""An RFC 3339 timestamp in UTC, serialised with a trailing Z."""


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

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore"
    )


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
        description="Where the model server loads the model from (env MODEL_URI), e.g. s3://models/fraud/2.4.0.",
    )
    digest: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]+:[A-Fa-f0-9]{16,128}$",
        description="Optional content digest of the model artefact (e.g. sha256:...), env MODEL_DIGEST; recorded for audit.",
    )


class ServiceSpec(_Wire):
    """The port the model server listens on; one Service per slot exposes it."""

    port: int = Field(default=8080, ge=1, le=65535, description="Service port, also the container port when targetPort is unset.")
    target_port: int | None = Field(default=None, ge=1, le=65535, description="Container port, when it differs from port.")


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
            "Index of the rule in spec.rules whose backendRefs and RequestMirror filter the operator "
            "manages. Every other rule, match, filter, hostname and parentRef is left untouched."
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
    """Exactly one traffic router."""

    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI", description="Use a Gateway API HTTPRoute."
    )
    istio: IstioRouting | None = Field(default=None, description="Use an Istio VirtualService.")
    replicas: ReplicaRatioRouting | None = Field(
        default=None,
        description="No mesh: weights approximated by replica ratio behind one Service; no shadow stage.",
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
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Stage name (DNS label), unique within the rollout; metrics select stages by it.",
    )
    weight: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of live traffic served by the candidate during this stage.",
    )
    mirror: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Percent of live traffic copied to the candidate (shadow); its answers are discarded. "
            "Only with gatewayAPI or istio routing."
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
        pattern=r"^https?://[^\s]+$",
        description="Base URL of Prometheus; defaults to the operator's --prometheus-url.",
    )
    timeout: Duration = Field(default="5s", description="Per-query timeout.")
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
        description="Which change is bad: increase (e.g. latency), decrease (e.g. accuracy) or either.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Confidence level of the test, e.g. 0.98."
    )
    tolerance: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="Relative change of the median tolerated even when significant, e.g. 0.25 = 25%.",
    )
    min_samples: int = Field(
        default=10, ge=3, le=10000, description="Fewer samples per side than this is Inconclusive."
    )
    window: Duration | None = Field(
        default=None, description="Range of the sample window; defaults to the time spent in the stage."
    )
    step: Duration = Field(default="5s", description="Resolution of the range query.")


class MetricTemplate(StrEnum):
    ERROR_RATE = "error-rate"
    LATENCY_P50 = "latency-p50"
    LATENCY_P95 = "latency-p95"
    LATENCY_P99 = "latency-p99"
    PREDICTION_PSI = "prediction-psi"
    REQUEST_RATE = "request-rate"


class MetricCheck(_Wire):
    """One SLO check, run at every analysis interval of the stages it applies to."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
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
    min: float | None = Field(default=None, description="The value must be >= min (threshold check).")
    max: float | None = Field(default=None, description="The value must be <= max (threshold check).")
    compare: CompareSpec | None = Field(
        default=None,
        description="Compare candidate and stable samples statistically instead of a fixed bound.",
    )
    stages: list[str] | None = Field(
        default=None,
        max_length=32,
        description="Stage names this check runs in; all stages when omitted.",
    )


class InconclusivePolicy(StrEnum):
    HOLD = "Hold"
    ROLLBACK = "Rollback"


class AnalysisSpec(_Wire):
    """How the candidate is judged at every step."""

    interval: Duration = Field(default="1m", description="How often the checks run.")
    failure_limit: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Failed results tolerated per stage; the next one rolls back (0 = roll back on the first breach).",
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Inconclusive (no data, NaN, too few samples) results in a row before onInconclusive applies.",
    )
    on_inconclusive: InconclusivePolicy = Field(
        default=InconclusivePolicy.HOLD,
        description="Hold (stay in the stage, Stalled condition, alert) or Rollback.",
    )
    error_limit: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Provider errors (unreachable, bad query) in a row before onInconclusive applies.",
    )
    prometheus: PrometheusSpec = Field(
        default_factory=PrometheusSpec, description="Prometheus connection."
    )
    metrics: list[MetricCheck] = Field(
        default_factory=list, max_length=64, description="The checks; none means time-based stages only."
    )


class WebhookType(StrEnum):
    PRE_ROLLOUT = "pre-rollout"
    CONFIRM_PROMOTION = "confirm-promotion"
    NOTIFY = "notify"
    AUDIT = "audit"


class WebhookSpec(_Wire):
    """A gate or a notification target."""

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Webhook name."
    )
    type: WebhookType = Field(
        description=(
            "pre-rollout: must answer 2xx before the candidate gets traffic; confirm-promotion: must "
            "answer 2xx before the last stage; notify: Slack-compatible message on stage change, "
            "promotion and rollback; audit: every audit entry as a CloudEvent."
        )
    )
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", description="Target URL.")
    url_from: SecretKeyRef | None = Field(default=None, description="Target URL read from a Secret.")
    headers_from: SecretKeyRef | None = Field(
        default=None, description="A Secret key holding extra headers as a JSON object."
    )
    timeout: Duration = Field(default="10s", description="Per-request timeout.")
    insecure_skip_verify: bool = Field(default=False, description="Disable TLS verification.")


class ModelRolloutSpec(_Wire):
    """Desired state: which model version should serve, and how to get there safely."""

    model: ModelIdentity = Field(description="The model version to roll out.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas of the model server per version.")
    template: dict[str, Any] = Field(
        description=(
            "The model server's PodTemplateSpec. The operator injects MODEL_NAME, MODEL_VERSION, "
            "MODEL_URI and MODEL_DIGEST into every container and adds its own labels."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "x-kubernetes-embedded-resource": False},
    )
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The model server's port.")
    traffic_routing: TrafficRouting = Field(description="How traffic reaches stable and candidate; exactly one router.")
    stages: list[Stage] = Field(
        default_factory=default_stages,
        min_length=1,
        max_length=20,
        description=(
            "The steps from first traffic to promotion. Weights never decrease and the last stage "
            "has weight 100. Default: shadow (mirror 100, 10m), canary-5 (10m), canary-25 (20m), full."
        ),
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description="SLO checks and the rollback decision.")
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=16, description="Gates and notifications.")
    progress_deadline: Duration = Field(
        default="10m",
        description="How long the candidate may take to become ready before the rollout fails and rolls back.",
    )
    paused: bool = Field(default=False, description="Hold the rollout where it is; traffic stays as it is.")


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

    name: str
    version: str
    uri: str
    digest: str | None = None


class StageStatus(_StatusWire):
    index: int = Field(description="Index into spec.stages.")
    name: str
    weight: int = Field(description="Candidate weight this stage asks for.")
    mirror: int = 0
    started_at: Time | None = Field(default=None, description="When the stage was entered.")
    ready_at: Time | None = Field(
        default=None, description="When the candidate was ready and traffic was set; the duration counts from here."
    )


class Weights(_StatusWire):
    stable: int = 100
    candidate: int = 0
    mirror: int = 0
    actual_candidate: float | None = Field(
        default=None, description="Replica-ratio router only: candidate replicas / total replicas."
    )


class MetricResult(_StatusWire):
    name: str
    verdict: Verdict
    value: float | None = None
    stable_value: float | None = None
    p_value: float | None = None
    bound: str | None = Field(default=None, description="The bound or test the value was judged against.")
    query: str | None = None
    message: str | None = None
    measured_at: Time | None = None


class AnalysisStatus(_StatusWire):
    last_run_at: Time | None = None
    failures: int = 0
    inconclusive: int = 0
    errors: int = 0
    results: list[MetricResult] = Field(default_factory=list)


class Condition(_StatusWire):
    """A kstatus-compatible condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: Time | None = None
    observed_generation: int | None = None


class HistoryEntry(_StatusWire):
    """One decision in the audit trail. ``hash`` chains entries so a gap or an edit is detectable."""

    time: Time
    event: str = Field(description="StageEntered, AnalysisFailed, Promoted, RolledBack, Command, ...")
    from_stage: str | None = Field(default=None, alias="from")
    to_stage: str | None = Field(default=None, alias="to")
    reason: str = ""
    model: ModelRef | None = None
    stable_version: str | None = None
    metrics: list[MetricResult] = Field(default_factory=list)
    actor: str = Field(default="modelrollout-operator", description="Who or what decided.")
    seq: int = 0
    prev_hash: str | None = None
    hash: str | None = None


class ModelRolloutStatus(_StatusWire):
    """Observed state, written only by the operator. Everything needed to resume lives here."""

    phase: Phase = Phase.IDLE
    message: str = ""
    stage: StageStatus | None = None
    weights: Weights = Field(default_factory=Weights)
    stable: ModelRef | None = None
    candidate: ModelRef | None = None
    stable_version: str | None = None
    candidate_version: str | None = None
    stable_slot: Literal["a", "b"] | None = Field(
        default=None, description="Which Deployment slot (a or b) runs the stable version."
    )
    rollout_started_at: Time | None = None
    observed_generation: int | None = None
    last_command: str | None = Field(default=None, description="The last manual command handled.")
    rollback_reason: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    analysis: AnalysisStatus = Field(default_factory=AnalysisStatus)
    history: list[HistoryEntry] = Field(default_factory=list)


class ModelRollout(BaseModel):
    """A whole ModelRollout object as read from the apiserver."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelRolloutSpec
    status: ModelRolloutStatus = Field(default_factory=ModelRolloutStatus)
