"""What each lab process is: its command line, its ports and its health check.

Start order is the order of :data:`COMPONENTS`. Core components make up the
control plane and Prometheus; data-plane components (the node simulator and the
gateway, written elsewhere) are started only when their modules exist.
"""

from __future__ import annotations

import importlib.util
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from e2e.lab import procs
from e2e.lab.state import LabPaths, LabState
from e2e.lab.tools import Tools

LOOPBACK = procs.LOOPBACK
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
CLIENT_QPS: int | None = None
"""Client QPS of the controller-manager and scheduler (their default is 20 and 50): the bench
lab raises it so creating 1,000 ReplicaSets' pods does not take minutes."""


def _qps_flags() -> list[str]:
    if CLIENT_QPS is None:
        return []
    return [f"--kube-api-qps={CLIENT_QPS}", f"--kube-api-burst={2 * CLIENT_QPS}"]


@dataclass(frozen=True)
class Context:
    """What command lines and health checks need to know."""

    paths: LabPaths
    state: LabState
    python: Path
    tools: Tools | None = None  # only needed to build command lines

    def port(self, component: str, name: str | None = None) -> int:
        record = self.state.components[component]
        port = record.port if name is None else record.extra_ports[name]
        if port is None:
            raise KeyError(f"{component} has no port")
        return port

    def need_tools(self) -> Tools:
        if self.tools is None:
            raise RuntimeError("command lines need the lab tools")
        return self.tools

    @property
    def apiserver_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port('apiserver')}"


@dataclass(frozen=True)
class Component:
    """One lab process. ``health`` raises when unhealthy, else returns a short detail."""

    name: str
    argv: Callable[[Context], list[str]]
    health: Callable[[Context], str]
    extra_ports: tuple[str, ...] = ()
    has_port: bool = True
    ready_timeout: float = 60.0
    stop_grace: float = 15.0  # SIGTERM, then SIGKILL after this many seconds
    core: bool = True
    module: str | None = None  # data plane: started only if this module exists

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


def _get(url: str, *, verify: ssl.SSLContext | bool = True, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, verify=verify, headers=headers, timeout=3.0)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: HTTP {response.status_code} {response.text[:300]}")
    return response.text


def ca_context(paths: LabPaths) -> ssl.SSLContext:
    """An SSL context trusting the lab's CA."""
    return ssl.create_default_context(cafile=str(paths.pki.ca_crt))


# --- etcd -------------------------------------------------------------------------------


def _etcd_argv(ctx: Context) -> list[str]:
    client, peer = ctx.port("etcd"), ctx.port("etcd", "peer")
    return [
        str(ctx.need_tools().etcd),
        "--name=lab",
        f"--data-dir={ctx.paths.etcd_data}",
        f"--listen-client-urls=http://{LOOPBACK}:{client}",
        f"--advertise-client-urls=http://{LOOPBACK}:{client}",
        f"--listen-peer-urls=http://{LOOPBACK}:{peer}",
        f"--initial-advertise-peer-urls=http://{LOOPBACK}:{peer}",
        f"--initial-cluster=lab=http://{LOOPBACK}:{peer}",
        "--initial-cluster-state=new",
        "--auto-compaction-retention=1",
        "--quota-backend-bytes=2147483648",
        "--logger=zap",
        "--log-level=warn",
    ]


def _etcd_health(ctx: Context) -> str:
    body = httpx.get(f"http://{LOOPBACK}:{ctx.port('etcd')}/health", timeout=3.0).json()
    if body.get("health") != "true":
        raise RuntimeError(f"etcd /health says {body}")
    return "health=true"


# --- kube-apiserver ---------------------------------------------------------------------


def _apiserver_argv(ctx: Context) -> list[str]:
    pki = ctx.paths.pki
    return [
        str(ctx.need_tools().kube_apiserver),
        f"--etcd-servers=http://{LOOPBACK}:{ctx.port('etcd')}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={ctx.port('apiserver')}",
        "--insecure-port=0",
        f"--tls-cert-file={pki.apiserver_crt}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_crt}",
        f"--token-auth-file={pki.tokens_csv}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--api-audiences={SA_ISSUER}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The "kubernetes" Service may not point at a loopback address: no endpoints.
        "--endpoint-reconciler-type=none",
        # The default set minus nothing: ServiceAccount admission stays (the
        # controller-manager's token controller makes the secrets it needs).
        "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
        "DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,"
        "ValidatingAdmissionWebhook,ResourceQuota,Priority",
        "--allow-privileged=true",
        f"--cert-dir={ctx.paths.serving_certs / 'apiserver'}",
        "--profiling=false",
        "--event-ttl=1h",
        "--v=1",
    ]


def _apiserver_health(ctx: Context) -> str:
    body = _get(
        f"{ctx.apiserver_url}/readyz",
        verify=ca_context(ctx.paths),
        token=ctx.paths.pki.admin_token,
    )
    return f"/readyz {body.strip()}"


# --- controller-manager and scheduler ---------------------------------------------------


def _kubeconfig_flags(ctx: Context) -> list[str]:
    # No --authentication/authorization-kubeconfig: their delegated auth would want a
    # front-proxy CA the lab does not have; /healthz is always allowed anyway.
    return [f"--kubeconfig={ctx.paths.kubeconfig}"]


def _controller_manager_argv(ctx: Context) -> list[str]:
    pki = ctx.paths.pki
    return [
        str(ctx.need_tools().kube_controller_manager),
        *_kubeconfig_flags(ctx),
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ctx.port('controller-manager')}",
        "--port=0",
        f"--cert-dir={ctx.paths.serving_certs / 'controller-manager'}",
        "--leader-elect=false",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        "--use-service-account-credentials=true",
        "--cluster-name=modelrollout-lab",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        *_qps_flags(),
        "--v=1",
    ]


def _scheduler_argv(ctx: Context) -> list[str]:
    return [
        str(ctx.need_tools().kube_scheduler),
        *_kubeconfig_flags(ctx),
        f"--bind-address={LOOPBACK}",
        f"--secure-port={ctx.port('scheduler')}",
        "--port=0",
        f"--cert-dir={ctx.paths.serving_certs / 'scheduler'}",
        "--leader-elect=false",
        *_qps_flags(),
        "--v=1",
    ]


def _healthz(component: str) -> Callable[[Context], str]:
    def check(ctx: Context) -> str:
        # the component's own self-signed serving cert: nothing to verify it against
        body = _get(f"https://{LOOPBACK}:{ctx.port(component)}/healthz", verify=False)
        return f"/healthz {body.strip()}"

    return check


# --- Prometheus -------------------------------------------------------------------------


def write_prometheus_config(ctx: Context) -> None:
    """Self-scrape plus a file_sd job over ``.lab/prometheus/targets/*.json``."""
    paths = ctx.paths
    for d in (paths.prometheus_targets, paths.prometheus_rules, paths.prometheus_data):
        d.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(paths.prometheus_rules / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"{LOOPBACK}:{ctx.port('prometheus')}"]}],
            },
            {
                "job_name": "lab",
                "honor_labels": True,
                "file_sd_configs": [
                    {"files": [str(paths.prometheus_targets / "*.json")], "refresh_interval": "1s"}
                ],
            },
        ],
    }
    paths.prometheus_config.write_text(yaml.safe_dump(config, sort_keys=False))


def _prometheus_argv(ctx: Context) -> list[str]:
    write_prometheus_config(ctx)
    return [
        str(ctx.need_tools().prometheus),
        f"--config.file={ctx.paths.prometheus_config}",
        f"--storage.tsdb.path={ctx.paths.prometheus_data}",
        "--storage.tsdb.retention.time=6h",
        f"--web.listen-address={LOOPBACK}:{ctx.port('prometheus')}",
        "--web.enable-lifecycle",
        "--web.enable-admin-api",
        "--log.level=warn",
    ]


def _prometheus_health(ctx: Context) -> str:
    return _get(f"http://{LOOPBACK}:{ctx.port('prometheus')}/-/ready").strip()


# --- data plane (modules owned by the data-plane engineer) ------------------------------


def _data_plane_argv(module: str, *, with_port: bool) -> Callable[[Context], list[str]]:
    def argv(ctx: Context) -> list[str]:
        args = [str(ctx.python), "-m", module, "--kubeconfig", str(ctx.paths.kubeconfig)]
        args += ["--state-dir", str(ctx.paths.dir)]
        if with_port:
            args += ["--port", str(ctx.port("gateway"))]
        return args

    return argv


def _process_only(ctx: Context) -> str:
    return "running"  # liveness is checked by the caller; there is no endpoint to ask


def _gateway_health(ctx: Context) -> str:
    port = ctx.port("gateway")
    if not procs.port_open(port):
        raise RuntimeError(f"nothing accepts connections on {LOOPBACK}:{port}")
    return f"listening on {port}"


COMPONENTS: tuple[Component, ...] = (
    Component("etcd", _etcd_argv, _etcd_health, extra_ports=("peer",), ready_timeout=30),
    Component("prometheus", _prometheus_argv, _prometheus_health, ready_timeout=60),
    # Its graceful shutdown waits up to a minute for open watches; etcd keeps the data.
    Component("apiserver", _apiserver_argv, _apiserver_health, ready_timeout=120, stop_grace=5),
    Component("controller-manager", _controller_manager_argv, _healthz("controller-manager")),
    Component("scheduler", _scheduler_argv, _healthz("scheduler")),
    Component(
        "nodesim",
        _data_plane_argv("e2e.lab.nodesim", with_port=False),
        _process_only,
        has_port=False,
        core=False,
        module="e2e.lab.nodesim",
        ready_timeout=30,
    ),
    Component(
        "gateway",
        _data_plane_argv("e2e.lab.gateway", with_port=True),
        _gateway_health,
        core=False,
        module="e2e.lab.gateway",
        ready_timeout=30,
    ),
)
BY_NAME = {c.name: c for c in COMPONENTS}
