"""The model server's settings, read from the environment (the pod template's env).

Every knob is validated up front: a bad value stops the server with a message that names the
variable and what it should be, instead of misbehaving later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """An environment variable holds a value the server cannot use."""


@dataclass(frozen=True)
class Identity:
    """Who this server is: the const labels of every metric series."""

    namespace: str = ""
    pod: str = ""
    service: str = ""
    version: str = ""
    model: str = ""

    def labels(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "service": self.service,
            "version": self.version,
            "model": self.model,
        }


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour, all off by default."""

    error_rate: float = 0.0
    error_rate_above_rps: float | None = None
    latency_ms: float = 0.0
    latency_factor: float = 1.0
    shuffled_labels: bool = False
    crash_after_s: float | None = None


@dataclass(frozen=True)
class ServerConfig:
    port: int
    identity: Identity
    faults: Faults
    model_uri: str = ""
    base_latency_ms: float = 6.0
    base_latency_sigma: float = 0.25
    parent_pid: int | None = None
    startup_delay_s: float = 0.0  # a slow model load: seconds before the server listens


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {raw!r}") from None
    if math.isnan(value) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {raw!r}")
    return value


def _optional_number(env: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    if env.get(name, "").strip() == "":
        return None
    return _number(env, name, 0.0, lo, hi)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {env[name]!r}")


def _port(env: Mapping[str, str]) -> int:
    raw = env.get("PORT", "").strip()
    if raw == "":
        return 8080
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(f"PORT must be an integer in [0, 65535], got {raw!r}")
    return int(raw)


def from_env(env: Mapping[str, str]) -> ServerConfig:
    """Build the configuration; raises ConfigError naming the first bad variable."""
    identity = Identity(
        namespace=env.get("POD_NAMESPACE", ""),
        pod=env.get("POD_NAME", ""),
        service=env.get("SERVICE_NAME", ""),
        version=env.get("MODEL_VERSION", ""),
        model=env.get("MODEL_NAME", ""),
    )
    error_rate_above = _optional_number(env, "FAULT_ERROR_RATE_ABOVE_RPS", 0.0, 1e9)
    # With only the load threshold set, every request above it fails.
    default_error_rate = 1.0 if error_rate_above is not None else 0.0
    faults = Faults(
        error_rate=_number(env, "FAULT_ERROR_RATE", default_error_rate, 0.0, 1.0),
        error_rate_above_rps=error_rate_above,
        latency_ms=_number(env, "FAULT_LATENCY_MS", 0.0, 0.0, 60_000.0),
        latency_factor=_number(env, "FAULT_LATENCY_FACTOR", 1.0, 0.0, 1000.0),
        shuffled_labels=_flag(env, "FAULT_SHUFFLED_LABELS"),
        crash_after_s=_optional_number(env, "FAULT_CRASH_AFTER_S", 0.0, 1e9),
    )
    parent = env.get("LAB_PARENT_PID", "").strip()
    if parent and not parent.isdigit():
        raise ConfigError(f"LAB_PARENT_PID must be a process id, got {parent!r}")
    return ServerConfig(
        port=_port(env),
        identity=identity,
        faults=faults,
        model_uri=env.get("MODEL_URI", ""),
        base_latency_ms=_number(env, "BASE_LATENCY_MS", 6.0, 0.0, 60_000.0),
        base_latency_sigma=_number(env, "BASE_LATENCY_SIGMA", 0.25, 0.0, 5.0),
        parent_pid=int(parent) if parent else None,
        startup_delay_s=_number(env, "STARTUP_DELAY_S", 0.0, 0.0, 600.0),
    )
