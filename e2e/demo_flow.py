"""The steps of ``make demo``, without the printing (e2e/demo.py shows them live).

1. :func:`start_operator`: the CRDs, the Helm chart (release ``modelrollout-operator`` in
   ``modelrollout-system``, watching ``demo``) and the operator as a local process running
   as the chart's ServiceAccount (see e2e/demo_chart.py for why and how).
2. :meth:`Demo.reset` forgets a previous run's rollout; :meth:`Demo.apply_version` writes a
   version's manifest to ``.lab/demo/<namespace>/`` and applies it with kubectl (as a user
   would; the first one with the HTTPRoute); :meth:`Demo.wait_serving` waits for the first
   version, :meth:`Demo.follow` for a rollout to settle, calling back on every poll so the
   caller can draw.

Every wait has a deadline; a failure raises :class:`DemoError` with what was expected and
what was seen.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.demo_chart import ChartOperator, ChartRelease, install, install_crds, lab_values
from e2e.harness import Rollouts
from e2e.lab.controlplane import Lab
from e2e.lab.waiting import LabError, wait_until
from e2e.scenarios.support import GW, Gateway
from modelrollout.cli import render

MODEL = "breast-cancer"  # the scikit-learn classifier the lab's model server trains


class DemoError(RuntimeError):
    """The demo could not do or see what it expected; the message says what and why."""


class Outcome(enum.Enum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"


@dataclass(frozen=True)
class DemoConfig:
    namespace: str = "demo"
    operator_namespace: str = "modelrollout-system"
    release: str = "modelrollout-operator"
    rollout: str = "classifier"
    rps: float = 20.0
    stage_seconds: int = 12
    interval_seconds: int = 3
    rollout_timeout: float = 300.0  # one version from apply to settled
    token_hours: int = 12  # lifetime of the operator's ServiceAccount token

    def work_dir(self, lab: Lab) -> Path:
        return lab.paths.dir / "demo" / self.namespace


# ----------------------------------------------------------------------------- manifests


def route_manifest(cfg: DemoConfig) -> dict[str, Any]:
    """The user's HTTPRoute: /predict goes to the stable slot until the operator says else."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": cfg.rollout, "namespace": cfg.namespace},
        "spec": {
            "parentRefs": [{"name": "lab-gateway"}],
            "hostnames": [f"{cfg.rollout}.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/predict"}}],
                    "backendRefs": [{"name": f"{cfg.rollout}-a", "port": 8080, "weight": 100}],
                }
            ],
        },
    }


def rollout_manifest(
    cfg: DemoConfig, version: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The ModelRollout of ``version``; ``env`` holds the model server's fault knobs."""
    stage = f"{cfg.stage_seconds}s"
    container: dict[str, Any] = {"name": "server", "image": "ghcr.io/example/sklearn-server:1.0"}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return {
        "apiVersion": "modelrollout.dev/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": cfg.rollout, "namespace": cfg.namespace},
        "spec": {
            "model": {"name": MODEL, "version": version, "uri": f"s3://models/{MODEL}/{version}"},
            "replicas": 1,
            "template": {"spec": {"containers": [container]}},
            "service": {"port": 8080},
            "trafficRouting": {"gatewayAPI": {"httpRoute": cfg.rollout}},
            "stages": [
                {"name": "shadow", "mirror": 100, "duration": stage},
                {"name": "canary-5", "weight": 5, "duration": stage},
                {"name": "canary-25", "weight": 25, "duration": stage},
                {"name": "full", "weight": 100},
            ],
            "analysis": {
                "interval": f"{cfg.interval_seconds}s",
                "failureLimit": 1,
                "inconclusiveLimit": 5,
                "onInconclusive": "Hold",
                "metrics": [
                    {"name": "error-rate", "template": "error-rate", "max": 0.02},
                    {"name": "p99-latency", "template": "latency-p99", "max": 0.5},
                    {
                        "name": "prediction-drift",
                        "template": "prediction-psi",
                        "max": 0.2,
                        "stages": ["shadow"],
                    },
                ],
            },
            "progressDeadline": "3m",
        },
    }


# ----------------------------------------------------------------------------- set-up


def ensure_namespace(lab: Lab, name: str) -> None:
    """Create the namespace unless it exists; a namespace stuck deleting is finished first.

    A namespace deleted while no operator ran keeps its ModelRollouts (their finalizer waits
    for the operator) and so never goes away: their finalizers are removed, as an admin would.
    """
    with lab.api_client() as api:
        core = k8s.CoreV1Api(api)
        try:
            found = core.read_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            found = None
        phase = found.status.phase if found is not None and found.status else None
        if found is not None and phase != "Terminating":
            return
        if found is not None:
            custom = k8s.CustomObjectsApi(api)
            listed = cast(
                dict[str, Any],
                custom.list_namespaced_custom_object(
                    "modelrollout.dev", "v1alpha1", name, "modelrollouts"
                ),
            )
            for item in listed["items"]:
                custom.patch_namespaced_custom_object(
                    "modelrollout.dev", "v1alpha1", name, "modelrollouts",
                    item["metadata"]["name"], {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip

            def gone() -> bool:
                try:
                    core.read_namespace(name)
                except ApiException as exc:
                    return bool(exc.status == 404)
                return False

            wait_until(gone, timeout=120, message=f"namespace {name} is still being deleted")
    lab.create_namespace(name, labels={"app.kubernetes.io/part-of": "modelrollout-demo"})


@dataclass
class Running:
    """What :func:`start_operator` set up."""

    release: ChartRelease
    operator: ChartOperator
    kubeconfig: Path


def start_operator(lab: Lab, cfg: DemoConfig) -> Running:
    """CRDs, the chart, and the operator process as the chart's ServiceAccount."""
    install_crds(lab)
    ensure_namespace(lab, cfg.operator_namespace)
    ensure_namespace(lab, cfg.namespace)
    release = install(lab, cfg.release, cfg.operator_namespace, lab_values(lab, [cfg.namespace]))
    kubeconfig = release.write_kubeconfig(
        cfg.work_dir(lab) / "operator.kubeconfig", expiration_seconds=cfg.token_hours * 3600
    )
    operator = release.operator(kubeconfig)
    try:
        operator.start()
    except BaseException:
        operator.stop()
        raise
    return Running(release, operator, kubeconfig)


# ----------------------------------------------------------------------------- the rollouts


class Demo:
    """The demo's rollout, route and load in ``cfg.namespace``."""

    def __init__(self, lab: Lab, cfg: DemoConfig) -> None:
        self.lab, self.cfg = lab, cfg
        self.api = lab.api_client()
        self.rollouts = Rollouts(self.api, self.cfg.namespace)
        url = self.lab.gateway_url
        if not url:
            raise DemoError("the lab gateway is not running (python -m e2e.lab status)")
        self.gateway = Gateway(url)

    # -- objects

    def get(self) -> dict[str, Any] | None:
        try:
            return self.rollouts.get(self.cfg.rollout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def stats(self) -> dict[str, Any]:
        return self.gateway.stats(self.cfg.namespace, "gatewayAPI", self.cfg.rollout)

    def reset(self) -> bool:
        """Delete a previous run's rollout and route (the operator must be running)."""
        name, ns = self.cfg.rollout, self.cfg.namespace
        custom = k8s.CustomObjectsApi(self.api)
        apps = k8s.AppsV1Api(self.api)
        found = self.get() is not None
        for group, version, plural in (("modelrollout.dev", "v1alpha1", "modelrollouts"), GW):
            try:
                custom.delete_namespaced_custom_object(group, version, ns, plural, name)
                found = True
            except ApiException as exc:
                if exc.status != 404:
                    raise

        def cleared() -> bool:
            slots = apps.list_namespaced_deployment(
                ns, label_selector=f"modelrollout.dev/rollout={name}"
            ).items
            return self.get() is None and not slots

        wait_until(
            cleared, timeout=120, message=f"the previous run's rollout {ns}/{name} to go away"
        )
        return found

    # -- steps

    def apply_version(
        self, version: str, env: dict[str, str] | None = None, *, with_route: bool = False
    ) -> Path:
        """Write ``.lab/demo/<ns>/<rollout>-<version>.yaml`` and ``kubectl apply`` it (as the
        lab's admin, i.e. a user). Only the first version's file holds the HTTPRoute: applying
        the route as first written again would put back the backend weights the operator manages
        (docs/gitops says how Argo CD and Flux leave them alone)."""
        suffix = "-faulty" if env else ""
        path = self.cfg.work_dir(self.lab) / f"{self.cfg.rollout}-{version}{suffix}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        knobs = ", ".join(f"{k}={v}" for k, v in sorted((env or {}).items()))
        header = (
            f"# Written by `make demo`: version {version} of the demo's model"
            + (f", with the model server's fault knob {knobs}" if knobs else "")
            + (" and the HTTPRoute it is served through" if with_route else "")
            + ".\n"
        )
        docs = [route_manifest(self.cfg)] if with_route else []
        docs.append(rollout_manifest(self.cfg, version, env))
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False))
        try:
            self.lab.kubectl("apply", "-f", str(path))
        except LabError as exc:
            raise DemoError(str(exc)) from None
        return path

    def wait_serving(self, version: str) -> dict[str, Any]:
        """Wait until the first version serves (it has nothing to be compared with)."""
        obj = self.follow(version, lambda _obj: None)
        if outcome(obj, version) is not Outcome.PROMOTED:
            raise DemoError(f"the first version {version} did not start: {_phase_text(obj)}")
        return obj

    def follow(
        self,
        version: str,
        on_tick: Callable[[dict[str, Any]], None],
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Poll the rollout until it settled for ``version`` (promoted or rolled back)."""
        deadline = time.monotonic() + self.cfg.rollout_timeout
        obj: dict[str, Any] | None = None
        while True:
            obj = self.get()
            if obj is not None:
                on_tick(obj)
                if outcome(obj, version) is not None:
                    return obj
            if time.monotonic() > deadline:
                raise DemoError(
                    f"version {version} did not finish within {self.cfg.rollout_timeout:.0f}s; "
                    f"now: {_phase_text(obj)}"
                )
            time.sleep(poll)  # the polling interval of a deadline-bounded condition wait

    def start_load(self) -> None:
        ns, name = self.cfg.namespace, self.cfg.rollout
        self.gateway.start_load(ns, "gatewayAPI", name, rps=self.cfg.rps)
        wait_until(
            lambda: self.stats()["total"] > 0,
            timeout=30,
            message="the gateway to serve the first requests",
        )

    def stop_load(self) -> None:
        self.gateway.stop_load(self.cfg.namespace, "gatewayAPI", self.cfg.rollout)

    def reset_stats(self) -> None:
        self.gateway.reset_stats(self.cfg.namespace, "gatewayAPI", self.cfg.rollout)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def outcome(obj: dict[str, Any], version: str) -> Outcome | None:
    """Promoted / rolled back once the rollout settled *for this version*, else None."""
    try:
        if not render.is_settled(obj):
            return None
        status = render.read_status(obj)
    except render.RenderError:
        return None
    if status.phase.value == "Succeeded" and status.stable_version == version:
        return Outcome.PROMOTED
    if status.phase.value in ("RolledBack", "Failed") and status.candidate_version == version:
        return Outcome.ROLLED_BACK
    return None


def _phase_text(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return "the rollout does not exist"
    status = obj.get("status") or {}
    stage = (status.get("stage") or {}).get("name") or "-"
    return (
        f"phase {status.get('phase') or '-'}, stage {stage}, stable "
        f"{status.get('stableVersion') or '-'}, candidate {status.get('candidateVersion') or '-'}"
        f": {status.get('message') or ''}"
    )


def user_errors(stats: dict[str, Any]) -> tuple[int, int]:
    """(5xx answers users got, requests users sent) in these gateway stats (mirrors excluded)."""
    counts = [stats.get("unrouted") or {}]
    counts += [b.get("codes") or {} for b in (stats.get("backends") or {}).values()]
    errors = sum(n for codes in counts for code, n in codes.items() if int(code) >= 500)
    return errors, int(stats.get("total") or 0)
