"""The lab: a real Kubernetes 1.20 API (etcd, apiserver, controller-manager, scheduler),
Prometheus and the simulated data plane, as local processes on 127.0.0.1.

CLI: ``python -m e2e.lab up|down|status|restart NAME|logs NAME``; Python: :class:`Lab`.
"""

from e2e.lab.controlplane import ComponentStatus, Lab
from e2e.lab.waiting import LabError

__all__ = ["ComponentStatus", "Lab", "LabError"]
