"""What the benchmark reads off the running system: /proc, and three /metrics endpoints.

- :class:`ProcSampler`: a process's resident memory (sampled ``VmRSS`` and the kernel's own
  high-water mark ``VmHWM``) and CPU time (``utime + stime`` of ``/proc/<pid>/stat``).
- :func:`writes`: the apiserver's ``apiserver_request_total`` counters of mutating
  verbs, by (verb, group, resource, subresource). The apiserver labels no user, so the bench
  attributes writes by resource (see :mod:`bench.measure`).
- :func:`scrape`: any Prometheus text endpoint (the operator's, Prometheus' own), parsed by
  ``prometheus_client``'s parser into ``{(name, labels): value}``.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]
WriteKey = tuple[str, str, str, str]  # verb, group, resource, subresource
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (None when the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # fields 14 and 15 of stat(5)


class ProcSampler:
    """Samples one process's RSS every ``period`` seconds in a daemon thread."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid = pid
        self.period = period
        self.peak_rss_kib = 0
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proc-{pid}", daemon=True)

    def start(self) -> ProcSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = _status_kib(self.pid, "VmRSS")
        hwm = _status_kib(self.pid, "VmHWM")
        if rss is not None:
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
        if hwm is not None:
            self.hwm_kib = max(self.hwm_kib, hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        """The larger of the sampled peak and the kernel's high-water mark, in MiB."""
        return max(self.peak_rss_kib, self.hwm_kib) / 1024


def scrape(url: str, *, token: str | None = None, ca_file: Path | None = None) -> Sample:
    """Every sample of a Prometheus text endpoint as ``{(name, sorted labels): value}``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    response = httpx.get(url, headers=headers, verify=verify, timeout=30.0)
    response.raise_for_status()
    samples: Sample = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def total(samples: Sample, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def apiserver_samples(apiserver_url: str, token: str, ca_file: Path) -> Sample:
    """The apiserver's own /metrics (the admin token may read them)."""
    return scrape(f"{apiserver_url}/metrics", token=token, ca_file=ca_file)


def writes(samples: Sample) -> Counter[WriteKey]:
    """Mutating requests the apiserver counted, by (verb, group, resource, subresource)."""
    found: Counter[WriteKey] = Counter()
    for (name, labels), value in samples.items():
        if name != "apiserver_request_total":
            continue
        lab = dict(labels)
        if lab.get("verb") in WRITE_VERBS:
            key = (
                lab["verb"],
                lab.get("group", ""),
                lab.get("resource", ""),
                lab.get("subresource", ""),
            )
            found[key] += int(value)
    return found


def reads_between(before: Sample, after: Sample) -> dict[str, int]:
    """GETs the apiserver answered between two snapshots, by resource (all clients)."""
    found: Counter[str] = Counter()
    for snapshot, sign in ((after, 1), (before, -1)):
        for (name, labels), value in snapshot.items():
            lab = dict(labels)
            if name == "apiserver_request_total" and lab.get("verb") == "GET":
                resource = "/".join(x for x in (lab.get("resource"), lab.get("subresource")) if x)
                found[resource] += sign * int(value)
    return {k: v for k, v in found.most_common() if v > 0}


def mean_between(before: Sample, after: Sample, histogram: str, **labels: str) -> float | None:
    """Mean of a histogram's observations between two snapshots (None: no observation)."""
    count = total(after, f"{histogram}_count", **labels) - total(
        before, f"{histogram}_count", **labels
    )
    if count <= 0:
        return None
    return (
        total(after, f"{histogram}_sum", **labels) - total(before, f"{histogram}_sum", **labels)
    ) / count


def quantile_between(
    before: Sample, after: Sample, histogram: str, q: float, **labels: str
) -> float | None:
    """The q-quantile of a histogram's observations between two snapshots, interpolated
    within its bucket as PromQL's histogram_quantile does (None: no observation; the largest
    finite bound if it falls in the +Inf bucket)."""
    name = f"{histogram}_bucket"

    def buckets(samples: Sample) -> dict[float, float]:
        out: dict[float, float] = {}
        for (sample_name, sample_labels), value in samples.items():
            found = dict(sample_labels)
            if sample_name != name or not set(labels.items()) <= set(sample_labels):
                continue
            bound = float(found["le"])
            out[bound] = out.get(bound, 0.0) + value
        return out

    old, new = buckets(before), buckets(after)
    cumulative = sorted((bound, new[bound] - old.get(bound, 0.0)) for bound in new)
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower
