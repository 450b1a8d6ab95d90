"""The lab's paths and its recorded state (``.lab/state.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from e2e.lab.pki import Pki
from e2e.lab.procs import ProcessId


@dataclass(frozen=True)
class LabPaths:
    """Every path the lab uses, derived from the repository root."""

    root: Path

    @property
    def dir(self) -> Path:
        return self.root / ".lab"

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / "lock"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def pki(self) -> Pki:
        return Pki(self.dir / "pki")

    @property
    def etcd_data(self) -> Path:
        return self.dir / "etcd"

    @property
    def prometheus(self) -> Path:
        return self.dir / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.prometheus / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.prometheus / "data"

    @property
    def prometheus_targets(self) -> Path:
        """Drop ``*.json`` file_sd target lists here; Prometheus picks them up within seconds."""
        return self.prometheus / "targets"

    @property
    def prometheus_rules(self) -> Path:
        """Drop ``*.yml`` rule files here, then POST /-/reload."""
        return self.prometheus / "rules"

    @property
    def serving_certs(self) -> Path:
        """Self-signed serving certs the controller-manager and scheduler make themselves."""
        return self.dir / "serving-certs"

    @property
    def crds(self) -> Path:
        return self.root / "e2e" / "lab" / "crds"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


class Pause(BaseModel):
    """A component stopped on purpose (``Lab.stop_component``) by a live process."""

    model_config = ConfigDict(extra="ignore")  # tolerate newer writers

    pid: int
    start_ticks: int
    at: float  # time.time() of the stop

    @property
    def owner(self) -> ProcessId:
        return ProcessId(self.pid, self.start_ticks)


class ComponentRecord(BaseModel):
    """One process of the lab as recorded: where it listens and which process it is."""

    model_config = ConfigDict(extra="ignore")  # tolerate newer writers

    port: int | None = None
    extra_ports: dict[str, int] = Field(default_factory=dict)
    pid: int | None = None
    start_ticks: int | None = None
    log: str
    paused: Pause | None = None

    @property
    def process(self) -> ProcessId | None:
        if self.pid is None or self.start_ticks is None:
            return None
        return ProcessId(self.pid, self.start_ticks)

    @property
    def ports(self) -> list[int]:
        main = [] if self.port is None else [self.port]
        return main + list(self.extra_ports.values())


class LabState(BaseModel):
    """Contents of ``.lab/state.json``."""

    model_config = ConfigDict(extra="ignore")  # tolerate newer writers

    created_at: str
    components: dict[str, ComponentRecord] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        """The recorded state, or None when there is none (or it is unreadable)."""
        try:
            return cls.model_validate_json(path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(path)
