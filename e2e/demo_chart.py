"""The Helm chart on the lab, and the operator running as the chart's ServiceAccount.

Shared by ``make demo`` (e2e/demo.py) and the chart's lab test (e2e/test_chart_lab.py).

The lab has every part of a cluster except a kubelet that runs container images: its node
simulator starts a *model-server* process for every pod bound to its node. So the chart is
installed with ``replicas: 0``: its Deployment, ServiceAccount, RBAC, peering object and
metrics Service are created exactly as on a real cluster, but the Deployment asks for no pod
(the values schema allows 0; no node simulator trick is needed). The operator then runs as a
local process (:class:`ChartOperator`) with

* the exact arguments of the chart's container (read back from the installed release), only
  ``--metrics-port`` moved to a free port and ``--metrics-host`` pinned to 127.0.0.1, and
* a token minted for the chart's ServiceAccount (TokenRequest), so every call it makes passes
  through the chart's RBAC, as in the pod.

CRDs: the chart's ``crds/modelrollout.yaml`` carries CEL rules (``x-kubernetes-validations``),
which the lab's 1.20 apiserver does not know. The chart is therefore installed with
``--skip-crds`` after :func:`install_crds` put in the no-CEL variant of the same CRD
(:func:`e2e.harness.install_crd`) and the chart's own kopf peering CRDs (applied unchanged:
they have no CEL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from e2e.harness import REPO, OperatorProcess, install_crd
from e2e.lab.controlplane import Lab
from modelrollout.api import crd

CHART = REPO / "charts" / "modelrollout-operator"
PEERING_CRDS = CHART / "crds" / "kopf-peerings.yaml"


class ChartError(RuntimeError):
    """helm failed, or the installed release does not look as expected; the message says why."""


def helm(lab: Lab, *args: str, timeout: float = 180.0) -> str:
    """Run the lab's helm (v4) against the lab as admin; its stdout, or :class:`ChartError`."""
    argv = [str(lab.bin_dir / "helm"), "--kubeconfig", str(lab.kubeconfig), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ChartError(f"helm {' '.join(args)} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()}")  # fmt: skip
    return proc.stdout


def install_crds(lab: Lab) -> None:
    """The ModelRollout CRD without CEL (the lab is 1.20) and the chart's kopf peering CRDs.

    Tests and the demo may do this at the same time: the CRD is only replaced when it differs
    from the generated one, and a conflicting concurrent replace is tried again.
    """
    if served_crd_spec(lab) != without_cel(crd.build_crd(cel=True))["spec"]:
        for attempt in Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, ApiException) and e.status == 409),
            stop=stop_after_attempt(3),
            reraise=True,
        ):
            with attempt:
                install_crd(lab)
    names = lab.kubectl(
        "apply", "--server-side", "--force-conflicts", "-o", "name", "-f", str(PEERING_CRDS)
    ).stdout.split()
    lab.wait_established(*names)


def served_crd_spec(lab: Lab) -> dict[str, Any] | None:
    """group, names, scope and versions of the ModelRollout CRD the lab serves (None: absent)."""
    proc = lab.kubectl("get", "crd", crd.CRD_NAME, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    spec = json.loads(proc.stdout)["spec"]
    return {k: spec[k] for k in ("group", "names", "scope", "versions")}


def without_cel(node: Any) -> Any:
    """``node`` without its ``x-kubernetes-validations`` (CEL rules), recursively."""
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [without_cel(v) for v in node]
    return node


def lab_values(lab: Lab, watch: Sequence[str], **overrides: Any) -> dict[str, Any]:
    """Chart values for the lab: no operator pod, the listed namespaces, the lab's Prometheus."""
    values: dict[str, Any] = {
        "replicas": 0,  # no pod: the operator runs as a local process (see the module doc)
        "watchNamespaces": list(watch),
        "prometheus": {"url": lab.prometheus_url},
    }
    values.update(overrides)
    return values


@dataclass
class ChartRelease:
    """One installed release of the chart."""

    lab: Lab
    name: str
    namespace: str
    objects: list[dict[str, Any]] = field(default_factory=list)

    def find(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    @property
    def deployment(self) -> dict[str, Any]:
        found = self.find("Deployment")
        if len(found) != 1:
            raise ChartError(f"release {self.name}: expected one Deployment, got {len(found)}")
        return found[0]

    @property
    def service_account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    @property
    def container_args(self) -> list[str]:
        """The operator container's arguments, as the chart rendered them."""
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        return [str(a) for a in containers[0]["args"]]

    @property
    def watch_namespaces(self) -> list[str]:
        args = self.container_args
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--namespace"]

    def token(self, expiration_seconds: int = 3600) -> str:
        """A TokenRequest token of the chart's ServiceAccount (never creates one)."""
        return self.lab.mint_token(
            self.namespace,
            self.service_account,
            expiration_seconds=expiration_seconds,
            create=False,
        )

    def write_kubeconfig(self, path: Path, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig for the lab that authenticates as the chart's ServiceAccount."""
        user = f"system:serviceaccount:{self.namespace}:{self.service_account}"
        return self.lab.write_kubeconfig(path, token=self.token(expiration_seconds), user=user)

    def operator(self, kubeconfig: Path, *, env: dict[str, str] | None = None) -> ChartOperator:
        """The operator process with the chart's arguments and ``kubeconfig``'s identity."""
        return ChartOperator(
            self.lab,
            self.container_args,
            kubeconfig=kubeconfig,
            namespaces=self.watch_namespaces,
            env={"POD_NAME": f"{self.name}-lab", "POD_NAMESPACE": self.namespace, **(env or {})},
        )

    def uninstall(self) -> None:
        helm(self.lab, "uninstall", self.name, "--namespace", self.namespace)


def install(lab: Lab, release: str, namespace: str, values: dict[str, Any]) -> ChartRelease:
    """``helm upgrade --install --skip-crds`` the chart (CRDs: see :func:`install_crds`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-") as values_file:
        yaml.safe_dump(values, values_file)
        values_file.flush()
        helm(
            lab, "upgrade", "--install", release, str(CHART), "--namespace", namespace,
            "--skip-crds", "--values", values_file.name,
        )  # fmt: skip
    manifest = helm(lab, "get", "manifest", release, "--namespace", namespace)
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    return ChartRelease(lab, release, namespace, objects)


class ChartOperator(OperatorProcess):
    """``modelrollout run`` with the chart container's arguments, as a local process.

    Only what a pod gets from its environment differs: the metrics port (a free one, bound to
    127.0.0.1 instead of the pod's IP) and the credentials (``--kubeconfig`` instead of the
    in-cluster token file).
    """

    def __init__(
        self,
        lab: Lab,
        chart_args: Sequence[str],
        *,
        kubeconfig: Path,
        namespaces: Sequence[str],
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(lab, namespaces, kubeconfig=kubeconfig, env=env)
        if "--metrics-port" not in chart_args:
            raise ChartError(f"the chart's operator arguments have no --metrics-port: {chart_args}")
        self.chart_args = list(chart_args)

    def argv(self) -> list[str]:
        args = list(self.chart_args)
        args[args.index("--metrics-port") + 1] = str(self.metrics_port)
        return [
            sys.executable,
            "-m",
            "modelrollout.cli.operator",
            "run",
            *args,
            "--metrics-host",
            "127.0.0.1",
            "--kubeconfig",
            str(self.kubeconfig),
        ]


__all__ = [
    "CHART",
    "ChartError",
    "ChartOperator",
    "ChartRelease",
    "helm",
    "install",
    "install_crds",
    "lab_values",
    "served_crd_spec",
    "without_cel",
]
