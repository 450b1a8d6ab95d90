"""One tenant cannot stop the operator for everyone (issue 22), on the lab.

- Tenant A creates ModelRollouts nested 1,100 levels deep (past every JSON decoder): in the pod
  template (the CRD's schema now prunes it: stored without it) and in metadata.managedFields
  (stored as sent: the operator's decoding drops it), plus a 250 KiB spec. The operator, watching
  A and B, sees them through its watch and, restarted, through its first list; tenant B's rollout
  keeps progressing, /healthz answers 200 throughout, and A's rollouts work.
- /healthz tells the truth: with the operator's apiserver connection cut (a relay in the test
  between it and the lab's apiserver), with it blackholed (watches look connected, due
  reconciles never complete), and with its event loop blocked (a signal handler that
  sleeps, installed by a sitecustomize on its PYTHONPATH), /healthz answers 503 saying why and
  the process exits with status 70 instead of idling.
- The committed source of spec.template's schema is the lab apiserver's own /openapi/v2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from kubernetes import client as k8s

from e2e.faults.support import record, wait_promoted
from e2e.faults.test_bad_input_lab import HealthWatch
from e2e.harness import GROUP, PLURAL, VERSION, OperatorProcess, Rollouts, wait_for
from e2e.lab.controlplane import Lab
from e2e.scenarios.support import create_route, rollout_manifest
from modelrollout.api import podtemplate_gen
from modelrollout.health import EXIT_UNHEALTHY
from modelrollout.kube.decoding import decode_document
from tests.bad_input.deep import DEPTH, nested

pytestmark = pytest.mark.lab

STAGES: list[dict[str, Any]] = [
    {"name": "canary", "weight": 50, "duration": "2s"},
    {"name": "full", "weight": 100},
]
BIG_SPEC_BYTES = 250 * 1024


def post_raw(lab: Lab, namespace: str, text: str) -> httpx.Response:
    """Create a ModelRollout from JSON text as sent (json.dumps cannot write 1,100 levels)."""
    url = f"{lab.apiserver_url}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    headers = {"Authorization": f"Bearer {lab.admin_token}", "Content-Type": "application/json"}
    verify = ssl.create_default_context(cafile=str(lab.ca_file))
    return httpx.post(url, content=text, headers=headers, verify=verify, timeout=30)


class Raw:
    """One ModelRollout read and patched as bytes: the kubernetes client (the json module)
    cannot decode an object 1,100 levels deep; its status is read through the operator's own
    decoding, which drops the undecodable managedFields."""

    def __init__(self, lab: Lab, namespace: str, name: str) -> None:
        self.url = f"{lab.apiserver_url}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self.url += f"/{name}"
        self.headers = {"Authorization": f"Bearer {lab.admin_token}"}
        self.verify = ssl.create_default_context(cafile=str(lab.ca_file))

    def read(self) -> bytes:
        answer = httpx.get(self.url, headers=self.headers, verify=self.verify, timeout=30)
        answer.raise_for_status()
        return answer.content

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = decode_document(self.read(), lambda _: None).get("status") or {}
        return status

    def patch(self, patch: dict[str, Any]) -> None:
        headers = {**self.headers, "Content-Type": "application/merge-patch+json"}
        answer = httpx.patch(self.url, json=patch, headers=headers, verify=self.verify, timeout=30)
        answer.raise_for_status()

    def wait_promoted(self, version: str, timeout: float) -> None:
        def promoted() -> bool:
            status = self.status()
            return status.get("phase") == "Succeeded" and status.get("stableVersion") == version

        wait_for(f"{self.url} to promote {version}", promoted, timeout=timeout)


def deep_manifests() -> dict[str, str]:
    """The tenant's rollouts as JSON text: a deep pod template, a deep managedFields."""
    template = rollout_manifest("deep-template", "1.0.0", stages=STAGES)
    template["spec"]["template"]["spec"]["x"] = "@DEEP@"
    fields = rollout_manifest("deep-fields", "1.0.0", stages=STAGES)
    fields["metadata"]["managedFields"] = [
        {"manager": "tenant", "operation": "Update", "apiVersion": f"{GROUP}/{VERSION}",
         "time": "2026-12-04T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": "@DEEP@"}
    ]  # fmt: skip
    return {
        name: json.dumps(body).replace('"@DEEP@"', nested(DEPTH, "f:spec"))
        for name, body in (("deep-template", template), ("deep-fields", fields))
    }


def big_manifest() -> dict[str, Any]:
    body = rollout_manifest("big-spec", "1.0.0", stages=STAGES)
    size = len(json.dumps(body["spec"], separators=(",", ":")))
    blob = "x" * (BIG_SPEC_BYTES - size - 40)
    body["spec"]["template"]["metadata"] = {"annotations": {"example.com/blob": blob}}
    assert abs(len(json.dumps(body["spec"], separators=(",", ":"))) - BIG_SPEC_BYTES) < 100
    return body


@pytest.fixture
def second_namespace(crd: Lab, namespace: str) -> Iterator[str]:
    """Tenant B's namespace, next to the test's own (tenant A's)."""
    name = f"{namespace[:50]}-b"
    crd.create_namespace(name, labels={"modelrollout.dev/test": "true"})
    yield name
    with crd.api_client() as api:
        custom = k8s.CustomObjectsApi(api)
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, name, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
    crd.delete_namespace(name)


def test_deep_objects_and_a_250_kib_spec_of_one_tenant_stop_no_one(
    crd: Lab, kube_api: k8s.ApiClient, namespace: str, second_namespace: str
) -> None:
    tenant_a, tenant_b = Rollouts(kube_api, namespace), Rollouts(kube_api, second_namespace)
    for name in ("deep-template", "deep-fields", "big-spec"):
        create_route(kube_api, namespace, "gatewayAPI", name)
    create_route(kube_api, second_namespace, "gatewayAPI", "steady")
    deep = Raw(crd, namespace, "deep-fields")
    op = OperatorProcess(crd, [namespace, second_namespace]).start()
    watches = [health := HealthWatch(op)]
    try:
        tenant_b.apply(rollout_manifest("steady", "1.0.0", stages=STAGES))
        tenant_b.wait_phase("steady", "Succeeded", timeout=90)

        # Tenant A, while the operator watches: accepted (201), then pruned or stored deep.
        for name, text in deep_manifests().items():
            answer = post_raw(crd, namespace, text)
            assert answer.status_code == 201, (name, answer.status_code, answer.text[:300])
        stored = tenant_a.get("deep-template")
        assert "x" not in stored["spec"]["template"]["spec"], "unknown field not pruned"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(deep.read())  # stored 1,100 deep
        tenant_a.apply(big_manifest())
        tenant_b.patch_spec("steady", {"model": {"version": "2.0.0", "uri": "s3://m/2.0.0"}})
        wait_promoted(tenant_b, "steady", "2.0.0", timeout=90)
        for name in ("deep-template", "big-spec"):
            tenant_a.wait_phase(name, "Succeeded", timeout=90)
        deep.wait_promoted("1.0.0", timeout=90)
        assert op.alive(), op.log_tail()

        # Restarted: the first list holds them all at once.
        health.stop()  # before the stop: the restart's own gap is not a failure
        op.stop()
        op = OperatorProcess(crd, [namespace, second_namespace]).start()
        watches.append(health := HealthWatch(op))
        tenant_b.patch_spec("steady", {"model": {"version": "3.0.0", "uri": "s3://m/3.0.0"}})
        deep.patch({"spec": {"model": {"version": "2.0.0", "uri": "s3://m/2.0.0"}}})
        wait_promoted(tenant_b, "steady", "3.0.0", timeout=90)
        deep.wait_promoted("2.0.0", timeout=90)
        assert op.alive(), op.log_tail()
    finally:
        health.stop()
        op.stop()
        # managedFields: [{}] makes the apiserver start them afresh: the object can be read
        # again by everyone (the namespace's clean-up lists it).
        deep.patch({"metadata": {"managedFields": [{}]}})
    polls, failures = sum(w.polls for w in watches), sum(w.failures for w in watches)
    assert all(w.polls > 5 for w in watches) and failures == 0, (polls, failures)
    record(
        crd,
        "deep-objects",
        {
            "depth": DEPTH,
            "deep_template": "pruned by the apiserver; rollout Succeeded",
            "deep_managed_fields": "stored deep; dropped on decoding; rollout promoted 2.0.0",
            "spec_bytes": BIG_SPEC_BYTES,
            "big_spec": "Succeeded",
            "other_tenant": "promoted 2.0.0 (watch), then 3.0.0 after a restart (list)",
            "healthz_polls": polls,
            "healthz_failures": failures,
        },
    )


# ------------------------------------------------------------------ a truthful /healthz


class Relay:
    """A TCP relay on 127.0.0.1 to the lab's apiserver that the test can cut (connections
    refused and broken) or freeze (connections kept open, nothing forwarded: a blackhole)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.frozen.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def kubeconfig(self, lab: Lab, directory: Path) -> Path:
        """The lab's admin kubeconfig, through this relay."""
        config = yaml.safe_load(lab.kubeconfig.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path = directory / f"relayed-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def healthz(op: OperatorProcess) -> tuple[int, str] | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{op.metrics_port}/healthz", timeout=2)
    except httpx.HTTPError:
        return None
    return answer.status_code, answer.text


def wait_unhealthy_then_exit(op: OperatorProcess, words: str) -> str:
    """/healthz answers 503 naming ``words``, then the process exits with EXIT_UNHEALTHY."""

    def failing() -> tuple[str] | None:
        answer = healthz(op)
        ok = answer is not None and answer[0] == 503 and words in answer[1]
        return (answer[1],) if answer is not None and ok else None

    (why,) = wait_for(f"/healthz to fail with {words!r}", failing, timeout=90)
    assert op.proc is not None
    code = wait_for("the operator to exit", lambda: op.proc.poll() if op.proc else None, timeout=60)
    assert code == EXIT_UNHEALTHY, (code, op.log_tail())
    return why


def apiserver_address(lab: Lab) -> tuple[str, int]:
    host, _, port = lab.apiserver_url.removeprefix("https://").partition(":")
    return host, int(port)


def test_healthz_fails_and_the_operator_exits_when_the_apiserver_is_cut_off(
    crd: Lab, namespace: str, tmp_path: Path
) -> None:
    relay = Relay(apiserver_address(crd))
    kubeconfig = relay.kubeconfig(crd, tmp_path)
    args = ["--liveness-watch-down", "5", "--liveness-exit-after", "5"]
    op = OperatorProcess(crd, [namespace], kubeconfig=kubeconfig, extra_args=args).start()
    try:
        assert healthz(op) == (200, "ok\n")
        relay.cut()
        why = wait_unhealthy_then_exit(op, "down for")
    finally:
        relay.cut()
        op.stop()
    record(crd, "healthz-apiserver-cut", {"healthz": why.strip(), "exit": EXIT_UNHEALTHY})


BLOCKER = '''"""Test-only: SIGUSR1 blocks the main thread (the event loop) for an hour."""
import signal
import time

signal.signal(signal.SIGUSR1, lambda *_: time.sleep(3600))
'''


def test_healthz_fails_and_the_operator_exits_when_its_event_loop_is_blocked(
    crd: Lab, namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["--liveness-loop-stall", "3", "--liveness-exit-after", "5"]
    op = OperatorProcess(crd, [namespace], extra_args=args, env=env).start()
    try:
        assert op.proc is not None and healthz(op) == (200, "ok\n")
        os.kill(op.proc.pid, signal.SIGUSR1)
        why = wait_unhealthy_then_exit(op, "event loop blocked")
    finally:
        op.stop()
    record(crd, "healthz-loop-blocked", {"healthz": why.strip(), "exit": EXIT_UNHEALTHY})


def test_the_pod_template_schema_is_the_lab_apiservers_own(crd: Lab) -> None:
    """The committed source of spec.template's schema is what the running apiserver serves
    (/openapi/v2), and the CRD it is part of is installed and served by it."""
    answer = httpx.get(
        f"{crd.apiserver_url}/openapi/v2",
        headers={"Authorization": f"Bearer {crd.admin_token}"},
        verify=ssl.create_default_context(cafile=str(crd.ca_file)),
        timeout=60,
    )
    answer.raise_for_status()
    served = podtemplate_gen.closure(answer.json()["definitions"])
    committed = json.loads(podtemplate_gen.SOURCE_FILE.read_text())["definitions"]
    assert served == committed
    assert podtemplate_gen.generate(served) == json.loads(podtemplate_gen.SCHEMA_FILE.read_text())


def test_healthz_fails_and_the_operator_exits_when_due_reconciles_never_complete(
    crd: Lab, kube_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The apiserver blackholed (connections open, nothing arrives): kopf's watches still look
    connected, but the reconciles of a rollout with work due every second (an analysis run
    writes its results) hang in their status writes, and none completes."""
    create_route(kube_api, namespace, "gatewayAPI", "busy")
    relay = Relay(apiserver_address(crd))
    args = ["--liveness-reconcile-stall", "5", "--liveness-exit-after", "5"]
    op = OperatorProcess(
        crd, [namespace], kubeconfig=relay.kubeconfig(crd, tmp_path), extra_args=args
    ).start()
    rollouts = Rollouts(kube_api, namespace)
    try:
        rollouts.apply(rollout_manifest("busy", "1.0.0", stages=STAGES))
        rollouts.wait_phase("busy", "Succeeded", timeout=90)
        slow = [{"name": "long", "weight": 50, "duration": "1h"}, {"name": "full", "weight": 100}]
        metrics = [{"name": "errors", "template": "error-rate", "max": 0.05}]
        rollouts.apply(rollout_manifest("busy", "2.0.0", stages=slow, metrics=metrics,
                                        interval="1s", inconclusive_limit=1000))  # fmt: skip

        def analysing() -> bool:
            return bool((rollouts.status("busy").get("analysis") or {}).get("runs"))

        wait_for("the analysis to run", analysing, timeout=90)
        assert healthz(op) == (200, "ok\n")
        relay.frozen.set()
        why = wait_unhealthy_then_exit(op, "no reconcile completed")
    finally:
        relay.cut()
        op.stop()
    record(crd, "healthz-reconciles-stuck", {"healthz": why.strip(), "exit": EXIT_UNHEALTHY})
