"""Malformed and hostile input, without a cluster.

The table is tests/bad_input/cases.py (the everyday mistakes are tests/invalid, checked by
tests/unit/api/test_invalid_manifests.py). Here:

- every case meets validate() as the table says: refused with its message, or accepted;
- what the apiserver refuses by schema, the CRD's schema refuses offline too (so the lab test's
  apiserver column is no accident of the lab);
- a hostile status (the status subresource is writable by anyone with the rights) cannot crash
  the reconcile, cannot skip a stage, and a forged audit trail is detected;
- a pod template the apiserver refuses is reported as an invalid spec with the apiserver's words,
  not retried forever;
- the longest durations the API allows cannot overflow the engine's clock arithmetic;
- a Prometheus with a certificate nobody vouched for is refused unless the spec opts out
  (the webhooks' twin is tests/unit/test_webhooks.py::test_tls_verification_is_on_by_default).

e2e/faults/test_bad_input_lab.py runs the same table against the lab and a running operator.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest
import trustme
from kubernetes.client.exceptions import ApiException

from modelrollout import audit, engine
from modelrollout.api import crd, validation
from modelrollout.api.models import (
    HistoryEntry,
    ModelRef,
    ModelRolloutSpec,
    ModelRolloutStatus,
    Phase,
    PrometheusSpec,
    StageStatus,
)
from modelrollout.engine.types import Observation, RouteState, SetTraffic, SlotState
from modelrollout.metrics.base import ProviderError, Value
from modelrollout.metrics.prometheus import PrometheusProvider, PrometheusProviderFactory
from modelrollout.metrics.templates import BUILTIN_QUERIES, render
from modelrollout.reconciler import Reconciler, _parse_status
from modelrollout.routing.base import DesiredRoutes
from tests.bad_input.cases import CASES, INJECTION, Case, base
from tests.unit.route_states import serving

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
IDS = [c.id for c in CASES]


def test_the_table_is_big_and_each_case_has_one_fate() -> None:
    assert len(CASES) >= 40
    assert len(set(IDS)) == len(IDS)
    for case in CASES:
        fates = [case.apiserver is not None, case.runtime is not None]
        assert sum(fates) <= 1, case.id  # refused by the apiserver, or held at run time, or ok
        if case.apiserver is not None:
            assert case.operator is not None or "labels" in case.apiserver, case.id
    kinds = {
        "refused by the apiserver": [c for c in CASES if not c.stored],
        "held as invalid by the operator": [c for c in CASES if c.stored and c.operator],
        "held at run time": [c for c in CASES if c.runtime],
        "accepted and harmless": [
            c for c in CASES if c.stored and not c.operator and not c.runtime
        ],
    }
    assert all(len(v) >= 2 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validate_refuses_exactly_what_the_table_says(case: Case) -> None:
    problems = validation.validate(case.manifest())
    if case.operator is not None:
        assert any(case.operator in p for p in problems), problems
    elif case.stored:
        assert problems == []


SCHEMA_CASES = [c for c in CASES if c.apiserver and c.apiserver.startswith("spec.")]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c.id for c in SCHEMA_CASES])
def test_the_crd_schema_refuses_what_the_apiserver_refuses(case: Case) -> None:
    schema = crd.openapi_schema(cel=False)["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError):  # OpenAPI v3.0 schemas are draft 4
        jsonschema.Draft4Validator(schema).validate(case.manifest()["spec"])


def test_an_injected_name_never_reaches_promql_unescaped() -> None:
    """Defense in depth behind the schema patterns: a value that would close a matcher is
    escaped where it stands (tests/unit/metrics/test_metrics_templates.py has the details)."""
    query = render(BUILTIN_QUERIES[next(iter(BUILTIN_QUERIES))], _variables(INJECTION))
    assert 'service="a\\"} or vector(1) or {x=\\""' in query
    assert '"} or vector(1)' not in query.replace('\\"} or vector(1)', "")


def _variables(value: str) -> dict[str, str]:
    names = ("namespace", "rollout", "service", "target", "stable", "candidate", "stage")
    return {**dict.fromkeys(names, value), "version": value, "interval": "60s"}


# ------------------------------------------------------------------------ hostile status


@pytest.mark.parametrize(
    "garbage",
    [
        {"phase": "Hacked"},
        {"history": "rm -rf /"},
        {"stage": {"index": "zero", "name": "x", "weight": 0}},
        {"weights": {"candidate": "lots"}},
        {"stableSlot": "c"},
        {"conditions": [{"type": "Ready"}]},
        {"history": [{"event": "Promoted"}]},
    ],
    ids=lambda g: next(iter(g)),
)
def test_an_unreadable_status_is_read_as_empty_rather_than_crashing(garbage: Any) -> None:
    assert _parse_status(garbage) == ModelRolloutStatus()


def _spec() -> ModelRolloutSpec:
    return validation.check(base("hostile"))


def _serving(*versions: tuple[str, str]) -> dict[Any, SlotState]:
    return {
        slot: SlotState(
            exists=True, version=v, desired=1, ready=1, updated=1, observed_current=True
        )
        for slot, v in versions
    }


def test_a_forged_stage_restarts_the_rollout_at_stage_0_instead_of_skipping() -> None:
    """A status claiming the rollout is in a stage that does not exist (index 99, ready long
    ago) must not let it promote: the stage is unknown, so the rollout starts at stage 0."""
    spec = _spec()
    stable = ModelRef(name="breast-cancer", version="0.9.0", uri="s3://models/bc/0.9.0")
    candidate = ModelRef(name="breast-cancer", version="1.0.0", uri="s3://models/bc/1.0.0")
    forged = ModelRolloutStatus(
        phase=Phase.PROGRESSING,
        stable=stable,
        stable_version="0.9.0",
        stable_slot="a",
        candidate=candidate,
        candidate_version="1.0.0",
        rollout_started_at=NOW - timedelta(days=1),
        stage=StageStatus(
            index=99,
            name="the-end",
            weight=100,
            started_at=NOW - timedelta(days=1),
            ready_at=NOW - timedelta(days=1),
        ),
    )
    obs = Observation(
        generation=1,
        slots=_serving(("a", "0.9.0"), ("b", "1.0.0")),
        route=serving(),
    )
    decision = engine.decide(spec, forged, obs, NOW)
    assert decision.status.phase is Phase.PROGRESSING
    assert decision.status.stage is not None and decision.status.stage.name == "shadow"
    assert decision.status.stable_version == "0.9.0"
    events = [e.event for e in decision.status.history]
    assert "Promoted" not in events and events[0] == "StageEntered", events
    traffic = [a for a in decision.actions if isinstance(a, SetTraffic)]
    assert all(a.candidate_weight == 0 for a in traffic), traffic


def test_a_forged_audit_trail_is_detected_after_the_operator_appends_to_it() -> None:
    history: list[HistoryEntry] = []
    for event in ("Initialized", "RolloutStarted", "StageEntered"):
        audit.append(history, HistoryEntry(time=NOW, event=event))
    forged = history[1].model_copy(update={"reason": "approved by the CEO"})
    status = ModelRolloutStatus(history=[history[0], forged, history[2]])
    spec = _spec()
    obs = Observation(generation=2, slots=_serving(("a", "1.0.0")), route=None)
    decision = engine.decide(spec, status, obs, NOW)
    problems = audit.verify(decision.status.history)
    assert any("hash mismatch" in p and "seq 2" in p for p in problems), problems


# --------------------------------------------------------- a pod template the apiserver refuses


class _Cluster:
    """Just enough of KubeClient and a router for the reconciler; Deployments are refused."""

    api_client = object()

    def __init__(self) -> None:
        self.creates = 0

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def ensure_roles(self, owner: Any, spec: Any, roles: Any) -> bool:
        return False

    async def ensure_slot(self, *_: Any) -> bool:
        self.creates += 1
        body = {
            "kind": "Status",
            "status": "Failure",
            "reason": "Invalid",
            "code": 422,
            "message": 'Deployment.apps "hostile-a" is invalid: spec.template.spec.containers[0]'
            '.name: Invalid value: "Model_Server": a lowercase RFC 1123 label must consist of ...',
        }
        exc = ApiException(status=422, reason="Unprocessable Entity")
        exc.body = json.dumps(body)
        raise exc

    async def scale_slot(self, *_: Any) -> bool:
        return False

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status

    def router(self, *_: Any, **__: Any) -> _Cluster:
        return self

    async def observe(self) -> RouteState:
        return serving()

    async def apply(self, desired: DesiredRoutes) -> bool:
        return True

    def replicas(self, service: str, asked: int, desired: DesiredRoutes) -> int:
        return asked


async def test_a_pod_template_the_apiserver_refuses_is_an_invalid_spec() -> None:
    cluster = _Cluster()
    events: list[tuple[str, str, str]] = []
    reconciler = Reconciler(
        kube=cluster,  # type: ignore[arg-type]
        providers=None,  # type: ignore[arg-type]
        post_event=lambda _b, type_, reason, message: events.append((type_, reason, message)),
        router_factory=cluster.router,
    )
    body: dict[str, Any] = {
        **base("hostile"),
        "status": {},
    }
    body["metadata"] = {"name": "hostile", "namespace": "ns", "uid": "u1", "generation": 1}
    await reconciler.reconcile(body, NOW)  # tries to create slot a: refused, not raised
    assert cluster.creates == 1
    body["status"] = cluster.status
    decision = await reconciler.reconcile(body, NOW + timedelta(seconds=1))
    assert decision is not None and cluster.creates == 1, "a refused template is not retried"
    stalled = next(c for c in decision.status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "InvalidSpec")
    assert "the apiserver refused Deployment hostile-a" in stalled.message
    assert 'Invalid value: "Model_Server"' in stalled.message
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in events]
    # A new spec generation is tried again.
    body["metadata"]["generation"] = 2
    body["status"] = cluster.status
    await reconciler.reconcile(body, NOW + timedelta(seconds=2))
    assert cluster.creates == 2


# ------------------------------------------------------------------------------- durations


def test_the_longest_durations_allowed_do_not_overflow_the_engine() -> None:
    longest = "8784h"
    manifest = base("slow")
    manifest["spec"]["progressDeadline"] = longest
    for stage in manifest["spec"]["stages"][:-1]:
        stage["duration"] = longest
    manifest["spec"]["analysis"]["interval"] = longest
    spec = validation.check(manifest)
    late = datetime(9998, 1, 1, tzinfo=UTC)  # the API's limit keeps even this clear of 9999
    for now in (NOW, late):
        obs = Observation(generation=1, slots={}, route=RouteState(found=True))
        decision = engine.decide(spec, ModelRolloutStatus(), obs, now)
        assert decision.status.phase is Phase.IDLE
    assert validation.validate(
        {**manifest, "spec": {**manifest["spec"], "progressDeadline": "8785h"}}
    )


# ------------------------------------------------------------- an untrusted Prometheus


@pytest.fixture
def https_prometheus() -> Iterator[tuple[str, trustme.CA]]:
    """A Prometheus look-alike on 127.0.0.1 over HTTPS, its certificate from a private CA."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "7"]}]},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", ca
    server.shutdown()
    server.server_close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_prometheus_tls_is_verified_unless_the_spec_opts_out(
    https_prometheus: tuple[str, trustme.CA],
) -> None:
    url, ca = https_prometheus
    factory = PrometheusProviderFactory()

    async def no_secrets(ref: Any) -> str:
        raise AssertionError("no Secret is named")

    try:
        default = await factory.provider_for(PrometheusSpec(address=url), no_secrets)
        outcome = await default.query("up")
        assert isinstance(outcome, ProviderError), outcome
        assert "certificate verify failed" in outcome.reason.lower(), outcome.reason
        opted_out = PrometheusSpec.model_validate(
            {"address": url, "tls": {"insecureSkipVerify": True}}
        )
        assert await (await factory.provider_for(opted_out, no_secrets)).query("up") == Value(7.0)
    finally:
        await factory.aclose()
    trusted = PrometheusProvider(url, 2, ca_pem=ca.cert_pem.bytes().decode())
    try:
        assert await trusted.query("up") == Value(7.0)  # the spec's tls.ca, from a Secret
    finally:
        await trusted.aclose()
