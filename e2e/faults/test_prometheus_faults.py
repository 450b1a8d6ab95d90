"""A Prometheus that answers too slowly, with garbage, with HTTP 500 or with no data.

Each rollout points ``spec.analysis.prometheus.address`` at its own path of a fake server in the
test; its checks run in every stage. None of them may ever leave the first stage: with policy
Hold it stays there (Stalled, saying why), with policy Rollback it rolls back; the stable version
never changes. A control rollout against a well-behaved fake (with a bearer token from a Secret)
is promoted, which shows the others were held by the data and nothing else. The operator runs
as the chart's ServiceAccount; afterwards the token appears nowhere: not in the operator's log
file, not in Events, not in any rollout's status.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.faults.support import (
    Behaviour,
    ChartIdentity,
    FakeServer,
    attempts,
    condition,
    events_text,
    history,
    leaks,
    prometheus_value,
    record,
)
from e2e.harness import OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest

pytestmark = pytest.mark.lab

STAGES: list[dict[str, Any]] = [
    {"name": "shadow", "mirror": 100, "duration": "2s"},
    {"name": "canary-50", "weight": 50, "duration": "2s"},
    {"name": "full", "weight": 100},
]
# name -> (how the fake answers, onInconclusive, the words the hold or rollback must give)
CASES: dict[str, tuple[Behaviour, str, str]] = {
    # The analysis interval is 2s, so the query timeout is 1s: answering after 3s is too late.
    "slow": (Behaviour(body=prometheus_value("0"), delay=3.0), "Hold", "did not answer within 1s"),
    "html": (
        Behaviour(body=b"<html>502 Bad Gateway</html>", content_type="text/html"),
        "Rollback",
        "malformed response from Prometheus",
    ),
    "bad-shape": (
        Behaviour(body={"status": "success", "data": {"resultType": "vector", "result": 7}}),
        "Hold",
        "malformed response from Prometheus",
    ),
    "http-500": (
        Behaviour(status=500, body={"status": "error", "errorType": "internal", "error": "boom"}),
        "Rollback",
        "answered HTTP 500",
    ),
    "no-data": (
        Behaviour(body={"status": "success", "data": {"resultType": "vector", "result": []}}),
        "Hold",
        "query returned no series",
    ),
    "nan": (Behaviour(body=prometheus_value("NaN")), "Rollback", "value is NaN"),
}
CHECKS = [{"name": "errors", "query": 'sum(up{job="{{ rollout }}"})', "max": 0.05}]


def manifest(name: str, version: str, address: str, policy: str) -> dict[str, Any]:
    body = rollout_manifest(
        name,
        version,
        stages=STAGES,
        metrics=CHECKS,
        failure_limit=0,
        inconclusive_limit=2,
        on_inconclusive=policy,
    )
    body["spec"]["analysis"]["errorLimit"] = 2
    body["spec"]["analysis"]["prometheus"] = {"address": address}
    return body


def test_never_a_promotion_on_missing_or_bad_data(
    crd: Lab,
    rollouts: Rollouts,
    kube_api: k8s.ApiClient,
    namespace: str,
    fake_server: FakeServer,
    chart_identity: ChartIdentity,
) -> None:
    token = f"mr-faults-{uuid.uuid4().hex}"
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="prom-auth"), string_data={"token": token}),
    )
    for case, (behaviour, _, _) in CASES.items():
        fake_server.set(f"/{case}", behaviour)
    fake_server.set("/good", Behaviour(body=prometheus_value("0")))

    def good_manifest(version: str) -> dict[str, Any]:
        body = manifest("good", version, fake_server.url("/good"), "Hold")
        body["spec"]["analysis"]["prometheus"]["auth"] = {
            "bearerToken": {"name": "prom-auth", "key": "token"}
        }
        return body

    names = [*CASES, "good"]
    for name in names:
        create_route(kube_api, namespace, "gatewayAPI", name)
    op = OperatorProcess(crd, [namespace], kubeconfig=chart_identity.kubeconfig).start()
    try:
        # The first versions need no analysis; the second ones meet the misbehaving Prometheus.
        for case, (_, policy, _) in CASES.items():
            rollouts.apply(manifest(case, "1.0.0", fake_server.url(f"/{case}"), policy))
        rollouts.apply(good_manifest("1.0.0"))
        for name in names:
            rollouts.wait_phase(name, "Succeeded", timeout=90)
        for case, (_, policy, _) in CASES.items():
            rollouts.apply(manifest(case, "2.0.0", fake_server.url(f"/{case}"), policy))
        rollouts.apply(good_manifest("2.0.0"))

        def promoted() -> dict[str, Any] | None:
            status = rollouts.status("good")
            return status if status.get("stableVersion") == "2.0.0" else None

        wait_for("the control rollout to be promoted", promoted, timeout=120)

        outcomes: dict[str, str] = {}
        for case, (_, policy, words) in CASES.items():
            if policy == "Rollback":
                status = rollouts.wait_phase(case, "RolledBack", timeout=90)
                assert words in status["rollbackReason"], (case, status["rollbackReason"])
            else:

                def stalled(name: str = case) -> dict[str, Any] | None:
                    status = rollouts.status(name)
                    return status if condition(status, "Stalled").get("status") == "True" else None

                status = wait_for(f"{case} to be held", stalled, timeout=90)
                assert status["phase"] == "Progressing", (case, status["phase"])
                assert "held:" in condition(status, "Stalled")["message"], case
                results = status["analysis"]["results"]
                assert any(words in (r.get("message") or "") for r in results), (case, results)
                runs = status["analysis"]["runs"]
                # Still held after more analysis runs: the hold is a state, not a moment.
                status = wait_for(
                    f"{case} to run its analysis again while held",
                    lambda name=case, before=runs: (
                        s
                        if (s := rollouts.status(name))["analysis"]["runs"] >= before + 2
                        else None
                    ),
                    timeout=60,
                )
                assert condition(status, "Stalled").get("status") == "True", case
            outcomes[case] = status["phase"]
            assert status["stableVersion"] == "1.0.0", case
            rollout_attempts = attempts(history(status))
            assert [a.stages_entered for a in rollout_attempts] == [["shadow"]], case
            assert all(a.outcomes in ([], ["RolledBack"]) for a in rollout_attempts), case
            assert (status.get("weights") or {}).get("candidate", 0) == 0, case
            assert fake_server.received(f"/{case}"), f"{case}: Prometheus never asked"

        # The control rollout's queries carried the token from the Secret.
        sent = {r.headers.get("Authorization") for r in fake_server.received("/good")}
        assert f"Bearer {token}" in sent
    finally:
        op.stop()

    objects = k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        "modelrollout.dev", "v1alpha1", namespace, "modelrollouts"
    )
    found = leaks(
        token,
        op.log_path.read_text(errors="replace"),
        events_text(kube_api, namespace),
        json.dumps(objects),
    )
    assert not found, f"the Prometheus bearer token leaked into: {found}"
    record(
        crd,
        "prometheus-misbehaving",
        {
            "cases": len(CASES),
            "outcomes": outcomes,
            "promotions_of_held_or_rolled_back": 0,
            "queries_answered_badly": sum(len(fake_server.received(f"/{c}")) for c in CASES),
            "control_promoted": True,
            "token_leaks": len(found),
        },
    )
