"""A lab of the benchmark's own, so 1,000 rollouts never slow down the shared lab's tests.

``e2e.lab.Lab(root)`` keeps its state in ``<root>/.lab`` and starts its data-plane processes
with ``<root>/.venv/bin/python -m e2e.lab.<module>`` from ``<root>``; it reads its test CRDs
from ``<root>/e2e/lab/crds``. A directory outside the repository with two symlinks (``.venv``
and ``e2e``, both to this checkout) is all it needs: a separate etcd, apiserver,
controller-manager, scheduler, Prometheus, node simulator and gateway on ports of their own,
sharing only the cached binaries (``~/.cache/modelrollout-lab``).

It also needs a wider Service range: every rollout has two Services (one per slot) and the lab's
``10.0.0.0/24`` holds 254 ClusterIPs, so the bench lab's apiserver gets ``10.0.0.0/16``. And a
faster controller-manager and scheduler: at their default client QPS (20 and 50) the
ReplicaSet controller needs minutes to create 1,000 candidate pods, so a round measured the
lab's kubelet pipeline instead of the operator.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e.lab import components
from e2e.lab.controlplane import Lab
from e2e.lab.state import LabState

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = Path(
    os.environ.get("MODELROLLOUT_BENCH_DIR", Path.home() / ".cache" / "modelrollout-bench")
)
LINKS = (".venv", "e2e")
SERVICE_CIDR = "10.0.0.0/16"
CLIENT_QPS = 300


class BenchLabError(RuntimeError):
    pass


def prepare_root(root: Path) -> Path:
    """Create ``root`` with its ``.venv`` and ``e2e`` symlinks to this checkout."""
    root = root.expanduser().resolve()
    if root == REPO or REPO in root.parents:
        raise BenchLabError(
            f"the bench lab directory {root} is inside the repository; use one outside it "
            "(the shared lab lives in the repository's own .lab)"
        )
    root.mkdir(parents=True, exist_ok=True)
    for name in LINKS:
        link, target = root / name, REPO / name
        if link.is_symlink():
            if link.resolve() == target.resolve():
                continue
            link.unlink()  # a link to another checkout: point it at this one
        elif link.exists():
            raise BenchLabError(
                f"{link} exists and is not a symlink; remove it or choose another --lab-dir"
            )
        link.symlink_to(target)
    return root


def _flags(lab: Lab, component: str) -> list[str] | None:
    """A running component's command line, None when it is not running."""
    state = LabState.load(lab.paths.state_file)
    record = state.components.get(component) if state else None
    if record is None or record.pid is None:
        return None
    try:
        return Path(f"/proc/{record.pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None


def bench_lab(root: Path = DEFAULT_ROOT) -> Lab:
    """The benchmark's own lab in ``root`` (not started: call ``.up()``).

    A running bench lab started with other settings (Service range, client QPS) is stopped, so
    ``up()`` starts it afresh with :data:`SERVICE_CIDR` and :data:`CLIENT_QPS`.
    """
    # The lab's command-line builders read this module global when they start a component.
    components.SERVICE_CIDR = SERVICE_CIDR
    components.CLIENT_QPS = CLIENT_QPS
    lab = Lab(prepare_root(root))
    wanted = {
        "apiserver": f"--service-cluster-ip-range={SERVICE_CIDR}",
        "controller-manager": f"--kube-api-qps={CLIENT_QPS}",
    }
    for component, flag in wanted.items():
        flags = _flags(lab, component)
        if flags is not None and flag not in flags:
            lab.down()
            break
    return lab
