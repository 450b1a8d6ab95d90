"""The lab: a real Kubernetes 1.20 control plane, Prometheus and the simulated data plane,
all as local processes on 127.0.0.1 with their state under ``.lab/``.

    lab = Lab()            # the repository this file lives in
    lab.up()               # reuse a healthy lab or start a fresh one
    lab.kubeconfig, lab.prometheus_url, lab.gateway_url, lab.admin_token, lab.env
    lab.stop_component("prometheus"); lab.start_component("prometheus")
    token = lab.mint_token("ns", "sa")
    lab.down()
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from e2e.lab import procs
from e2e.lab.components import BY_NAME, COMPONENTS, Component, Context
from e2e.lab.kube import KubeAccess, write_kubeconfig
from e2e.lab.state import ComponentRecord, LabPaths, LabState, Pause
from e2e.lab.tools import Tools, ensure_tools
from e2e.lab.waiting import LabError, wait_until

log = logging.getLogger("e2e.lab")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 40
# How long up() in another process waits for a component stopped on purpose.
PAUSE_LIMIT = 300.0


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``Lab.status()``."""

    name: str
    pid: int | None
    port: int | None
    healthy: bool
    detail: str
    required: bool = True  # False for a data-plane component whose module does not exist

    def __str__(self) -> str:
        pid = "-" if self.pid is None else str(self.pid)
        port = "-" if self.port is None else str(self.port)
        state = "ok" if self.healthy else ("absent" if not self.required else "UNHEALTHY")
        return f"{self.name:<19} pid {pid:>7}  port {port:>5}  {state:<9} {self.detail}"


class Lab(KubeAccess):
    """Handle on the lab of one repository checkout (state in ``<root>/.lab``)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.paths = LabPaths(Path(root).resolve() if root else REPO_ROOT)
        self._tools: Tools | None = None
        self._lock_depth = 0
        self._thread_lock = threading.RLock()

    # ---- what others read -------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (token auth, CA embedded)."""
        return self.paths.kubeconfig

    @property
    def ca_file(self) -> Path:
        """The CA that signed the apiserver's serving cert."""
        return self.paths.pki.ca_crt

    @property
    def bin_dir(self) -> Path:
        """Holds kubectl (1.20), kubectl1.35 (has `create token`) and helm (v4)."""
        return self.paths.bin

    @property
    def admin_token(self) -> str:
        """Bearer token of user lab-admin in group system:masters."""
        return self.paths.pki.admin_token

    @property
    def apiserver_url(self) -> str:
        return f"https://{procs.LOOPBACK}:{self._port('apiserver')}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{procs.LOOPBACK}:{self._port('prometheus')}"

    @property
    def gateway_url(self) -> str | None:
        """URL of the data-plane gateway, None while it is not running."""
        state = self.state
        record = state.components.get("gateway")
        if record is None or record.pid is None or record.port is None:
            return None
        return f"http://{procs.LOOPBACK}:{record.port}"

    @property
    def prometheus_targets_dir(self) -> Path:
        """Write file_sd ``*.json`` target lists here (job "lab", honor_labels: true)."""
        return self.paths.prometheus_targets

    @property
    def prometheus_rules_dir(self) -> Path:
        """Write rule ``*.yml`` files here, then call :meth:`reload_prometheus`."""
        return self.paths.prometheus_rules

    @property
    def state(self) -> LabState:
        state = LabState.load(self.paths.state_file)
        if state is None:
            raise LabError(
                f"the lab is not up (no {self.paths.state_file}); run: python -m e2e.lab up"
            )
        return state

    @property
    def env(self) -> dict[str, str]:
        """Variables for tools run against the lab (PATH has .lab/bin first)."""
        return self._env(self.state)

    def _port(self, component: str) -> int:
        port = self.state.components[component].port
        if port is None:
            raise LabError(f"{component} has no recorded port")
        return port

    # ---- lifecycle --------------------------------------------------------------------

    def up(self) -> Lab:
        """Reuse the running lab if healthy, else clean up and start a fresh one.

        Then apply ``e2e/lab/crds/*.yaml`` and start the data-plane processes whose
        modules exist. Raises :class:`LabError` (with the failing log's tail).
        """
        started = time.monotonic()
        self._wait_while_paused()
        with self._locked():
            state = LabState.load(self.paths.state_file)
            if state is not None and self._core_healthy(state):
                log.info("reusing the running lab")
                self._ensure_bin()
            else:
                state = self._fresh_start(state)
            self._apply_crds()
            self._ensure_data_plane(state)
            self._write_env()
        log.info("lab up in %.1fs", time.monotonic() - started)
        return self

    def down(self) -> None:
        """Stop every recorded process (and any leftover of this lab); free their ports."""
        with self._locked():
            state = LabState.load(self.paths.state_file)
            ports: list[int] = []
            if state is not None:
                ports = [p for record in state.components.values() for p in record.ports]
                self._stop_all(state)
            leftovers = procs.kill_marked(str(self.paths.dir))
            if leftovers:
                log.info("stopped leftover lab processes %s", leftovers)
            procs.wait_ports_closed(ports)
            for path in (self.paths.state_file, self.paths.env_file, self.paths.kubeconfig):
                path.unlink(missing_ok=True)

    def status(self) -> list[ComponentStatus]:
        """Each component's pid, port and health (asks every health endpoint)."""
        state = LabState.load(self.paths.state_file)
        if state is None:
            return [ComponentStatus(c.name, None, None, False, "lab not up") for c in COMPONENTS]
        ctx = self._context(state)
        return [self._component_status(c, state, ctx) for c in COMPONENTS]

    def healthy(self) -> bool:
        return all(s.healthy or not s.required for s in self.status())

    def stop_component(self, name: str) -> None:
        """Stop one component (e.g. "prometheus", "apiserver"); its port is free afterwards.

        Until :meth:`start_component` (or this process's exit, or PAUSE_LIMIT seconds),
        ``up()`` in other processes waits instead of replacing the lab as unhealthy.
        """
        component = _component(name)
        with self._locked():
            state = self.state
            record = state.components[component.name]
            if record.process is not None:
                log.info("stopping %s (pid %s)", name, record.pid)
                procs.stop(record.process, grace=component.stop_grace)
            procs.wait_ports_closed(record.ports)
            record.pid = record.start_ticks = None
            me = os.getpid()
            record.paused = Pause(pid=me, start_ticks=procs.start_ticks(me) or 0, at=time.time())
            state.save(self.paths.state_file)

    def start_component(self, name: str) -> None:
        """Start one stopped component on its recorded ports and wait until it is healthy."""
        component = _component(name)
        with self._locked():
            state = self.state
            if not component.available():
                raise LabError(f"{name}: module {component.module} does not exist")
            record = state.components[component.name]
            if record.process is not None and procs.is_running(record.process):
                self._wait_healthy(component, state)
                return
            self._start(component, state)
            self._wait_healthy(component, state)
            self._write_env()

    def restart_component(self, name: str) -> None:
        """Stop and start one component. After the apiserver, also wait until the
        controller-manager acts again, so the next user of the lab finds it whole."""
        with self._locked():
            self.stop_component(name)
            self.start_component(name)
        if _component(name).name == "apiserver":
            self.wait_controllers()

    def reload_prometheus(self) -> None:
        """POST /-/reload (after changing rule files)."""
        response = httpx.post(f"{self.prometheus_url}/-/reload", timeout=10.0)
        if response.status_code != 200:
            raise LabError(f"Prometheus reload: HTTP {response.status_code} {response.text}")

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.paths.log(name)
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return f"(no log at {path})"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    # ---- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise lifecycle changes across processes (flock) and threads (re-entrant)."""
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self.paths.dir.mkdir(parents=True, exist_ok=True)
            with self.paths.lock_file.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _context(self, state: LabState, *, with_tools: bool = False) -> Context:
        return Context(
            paths=self.paths,
            state=state,
            python=_venv_python(self.paths.root),
            tools=self._ensure_tools() if with_tools else None,
        )

    def _ensure_tools(self) -> Tools:
        if self._tools is None:
            self._tools = ensure_tools(self.paths.bin)
        return self._tools

    def _ensure_bin(self) -> None:
        wanted = ("kubectl", "kubectl1.35", "helm")
        if not all((self.paths.bin / name).exists() for name in wanted):
            self._ensure_tools()

    def _wait_while_paused(self) -> None:
        """Wait while another live process has a component stopped on purpose."""

        def paused() -> list[str]:
            state = LabState.load(self.paths.state_file)
            if state is None:
                return []
            return [
                f"{name} (by pid {r.paused.pid})"
                for name, r in state.components.items()
                if r.paused is not None
                and r.paused.pid != os.getpid()
                and procs.is_running(r.paused.owner)
                and time.time() - r.paused.at < PAUSE_LIMIT
            ]

        if found := paused():
            log.info("waiting: stopped on purpose: %s", ", ".join(found))
            wait_until(lambda: not paused(), timeout=PAUSE_LIMIT, interval=0.5, raise_error=False)

    def _core_healthy(self, state: LabState) -> bool:
        ctx = self._context(state)
        for component in COMPONENTS:
            if not component.core:
                continue
            status = self._component_status(component, state, ctx)
            if not status.healthy:
                log.info("%s is not healthy (%s)", component.name, status.detail)
                return False
        return self.paths.pki.complete() and self.paths.kubeconfig.exists()

    def _component_status(
        self, component: Component, state: LabState, ctx: Context
    ) -> ComponentStatus:
        record = state.components.get(component.name)
        port = None if record is None else record.port
        if record is None or record.process is None:
            if component.available():
                return ComponentStatus(component.name, None, port, False, "not running")
            return ComponentStatus(
                component.name, None, None, False, f"module {component.module} absent",
                required=False,
            )  # fmt: skip
        if not procs.is_running(record.process):
            return ComponentStatus(component.name, record.pid, port, False, "process gone")
        try:
            detail = component.health(ctx)
        except Exception as exc:
            return ComponentStatus(component.name, record.pid, port, False, f"unhealthy: {exc}")
        return ComponentStatus(component.name, record.pid, port, True, detail)

    def _fresh_start(self, old: LabState | None) -> LabState:
        tools = self._ensure_tools()
        self._cleanup(old)
        log.info("starting a fresh lab in %s", self.paths.dir)
        self.paths.pki.create(tools.openssl)
        state = self._new_state()
        write_kubeconfig(
            self.paths.kubeconfig,
            f"https://{procs.LOOPBACK}:{state.components['apiserver'].port}",
            self.paths.pki.ca_crt,
            self.paths.pki.admin_token,
            "lab-admin",
        )
        core = [c for c in COMPONENTS if c.core]
        # etcd and Prometheus start together; the rest in dependency order.
        for name in ("etcd", "prometheus"):
            self._start(BY_NAME[name], state)
        self._wait_healthy(BY_NAME["etcd"], state)
        self._start(BY_NAME["apiserver"], state)
        self._wait_healthy(BY_NAME["apiserver"], state)
        for name in ("controller-manager", "scheduler"):
            self._start(BY_NAME[name], state)
        for component in core:
            self._wait_healthy(component, state)
        wait_until(
            lambda: self.kubectl("get", "namespaces", "-o", "name", timeout=10).returncode == 0,
            timeout=30.0,
            interval=0.5,
            message="kubectl get namespaces does not work",
        )
        return state

    def _cleanup(self, old: LabState | None) -> None:
        """Stop whatever an earlier lab left running and remove its data."""
        ports: list[int] = []
        if old is not None:
            ports = [p for record in old.components.values() for p in record.ports]
            self._stop_all(old)
        leftovers = procs.kill_marked(str(self.paths.dir))
        if leftovers:
            log.info("stopped leftover lab processes %s", leftovers)
        procs.wait_ports_closed(ports)
        for path in (
            self.paths.etcd_data,
            self.paths.prometheus,
            self.paths.pki.dir,
            self.paths.serving_certs,
            self.paths.logs,
        ):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.paths.state_file, self.paths.env_file, self.paths.kubeconfig):
            path.unlink(missing_ok=True)

    def _stop_all(self, state: LabState) -> None:
        """Stop in reverse start order (the apiserver shuts down slowly without etcd)."""
        order = [c.name for c in reversed(COMPONENTS)]
        names = [n for n in state.components if n not in order] + order
        for name in names:
            record = state.components.get(name)
            if record is not None and record.process is not None:
                log.info("stopping %s (pid %s)", name, record.pid)
                procs.stop(record.process, grace=_grace(name))

    def _new_state(self) -> LabState:
        wanted = sum(int(c.has_port) + len(c.extra_ports) for c in COMPONENTS)
        ports = iter(procs.free_ports(wanted))
        state = LabState(created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        for c in COMPONENTS:
            state.components[c.name] = ComponentRecord(
                port=next(ports) if c.has_port else None,
                extra_ports={name: next(ports) for name in c.extra_ports},
                log=str(self.paths.log(c.name)),
            )
        state.save(self.paths.state_file)
        return state

    def _start(self, component: Component, state: LabState) -> None:
        record = state.components.setdefault(
            component.name, ComponentRecord(log=str(self.paths.log(component.name)))
        )
        busy = [p for p in record.ports if procs.port_open(p)]
        if busy == [record.port] and not component.core:
            busy = []  # a data-plane port may move: its URL is read from the state
            record.port = None
        if busy:
            raise LabError(f"{component.name}: port(s) {busy} taken by another process")
        if component.has_port and record.port is None:
            record.port = procs.free_ports(1)[0]
        argv = component.argv(self._context(state, with_tools=True))
        where = "" if record.port is None else f" on {record.port}"
        log.info("starting %s%s", component.name, where)
        started = procs.start_detached(
            argv,
            log_file=self.paths.log(component.name),
            env=self._child_env(state),
            cwd=self.paths.root,
            marker=str(self.paths.dir),
        )
        record.pid, record.start_ticks = started.pid, started.start_ticks
        record.paused = None
        state.save(self.paths.state_file)

    def _child_env(self, state: LabState) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        if self.paths.pki.tokens_csv.exists():
            env.update(self._env(state))
        return env

    def _env(self, state: LabState) -> dict[str, str]:
        c = state.components
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "PROMETHEUS_URL": f"http://{procs.LOOPBACK}:{c['prometheus'].port}",
            "LAB_APISERVER_URL": f"https://{procs.LOOPBACK}:{c['apiserver'].port}",
            "LAB_ADMIN_TOKEN": self.admin_token,
            "LAB_CA_FILE": str(self.ca_file),
        }
        gateway = c.get("gateway")
        if gateway is not None and gateway.pid is not None:
            env["LAB_GATEWAY_URL"] = f"http://{procs.LOOPBACK}:{gateway.port}"
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return env

    def _wait_healthy(self, component: Component, state: LabState) -> None:
        record = state.components[component.name]
        ctx = self._context(state)
        process = record.process
        if process is None:
            raise LabError(f"{component.name} was not started")

        def ready() -> bool:
            if not procs.is_running(process):
                raise LabError(f"{component.name} exited")
            component.health(ctx)
            return True

        try:
            wait_until(
                ready,
                timeout=component.ready_timeout,
                interval=0.2,
                message=f"{component.name} is not healthy",
            )
        except LabError as exc:
            tail = self.log_tail(component.name)
            raise LabError(f"{exc}\n--- last lines of {record.log} ---\n{tail}") from None
        log.info("%s is healthy", component.name)

    def _ensure_data_plane(self, state: LabState) -> None:
        ctx = self._context(state)
        for component in COMPONENTS:
            if component.core or not component.available():
                continue
            if self._component_status(component, state, ctx).healthy:
                continue
            record = state.components.get(component.name)
            if record is not None and record.process is not None:
                procs.stop(record.process, grace=component.stop_grace)
            self._start(component, state)
            self._wait_healthy(component, state)

    def _apply_crds(self) -> None:
        files = sorted(self.paths.crds.glob("*.yaml")) if self.paths.crds.is_dir() else []
        if not files:
            return
        args = ["apply", "-o", "name"] + [a for f in files for a in ("-f", str(f))]
        names = self.kubectl(*args).stdout.split()
        crds = [n for n in names if n.startswith("customresourcedefinition")]
        if crds:
            self.wait_established(*crds)
        log.info("applied %d file(s) from %s", len(files), self.paths.crds)

    def _write_env(self) -> None:
        lines = ["# source me: the lab's endpoints and credentials"]
        for key, value in self.env.items():
            if key == "PATH":
                lines.append(f'export PATH={shlex.quote(str(self.bin_dir))}:"$PATH"')
            else:
                lines.append(f"export {key}={shlex.quote(value)}")
        self.paths.env_file.write_text("\n".join(lines) + "\n")


def _grace(name: str) -> float:
    component = BY_NAME.get(name)
    return 15.0 if component is None else component.stop_grace


def _component(name: str) -> Component:
    try:
        return BY_NAME[name]
    except KeyError:
        raise LabError(f"unknown lab component {name!r}; known: {', '.join(BY_NAME)}") from None


def _venv_python(root: Path) -> Path:
    venv = root / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


__all__ = ["ComponentStatus", "Lab", "LabError"]
