"""``make demo``: a real rollout on the lab, a promotion then an automatic rollback, shown live.

    python -m e2e.demo             # the demo (what `make demo` runs)
    python -m e2e.demo operator    # afterwards: the operator again, in the foreground, to try
                                   # kubectl modelrollout pause/resume/promote/abort/retry

What it does: brings up the lab (the first time this builds the control plane), installs the
CRDs and the Helm chart, runs the operator as the chart's ServiceAccount (e2e/demo_chart.py),
deploys version 1.0 of a scikit-learn model behind an HTTPRoute, sends it steady traffic
through the lab gateway, rolls out 1.1 (healthy: promoted) and 1.2 (answers 8% of requests
with HTTP 500: rolled back by the analysis), and prints a summary and where to look next.

The operator is stopped at the end (it is a process of this command, holding a token of the
chart's ServiceAccount; nothing should outlive the command that started it). The lab keeps
running, with the demo's objects in it, for you to look around; ``make lab-down`` stops it.

Exit status: 0 when 1.1 was promoted and 1.2 rolled back, 1 when either did not happen or a
step failed (the message says which and why), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from e2e.demo_chart import ChartError
from e2e.demo_flow import (
    Demo,
    DemoConfig,
    DemoError,
    Outcome,
    Running,
    outcome,
    start_operator,
    user_errors,
)
from e2e.harness import REPO
from e2e.lab.controlplane import Lab
from e2e.lab.waiting import LabError
from e2e.scenarios.support import pod_uids
from modelrollout.cli import plugin, render

FAULT = {"FAULT_ERROR_RATE": "0.08"}


# ----------------------------------------------------------------------------- output


class Console:
    """Headings, indented lines and a live view redrawn in place on a terminal.

    Off a terminal (CI, a pipe) the live view prints one line per change instead.
    """

    def __init__(self, steps: int, out: TextIO = sys.stdout) -> None:
        self.steps = steps
        self.out = out
        self.tty = out.isatty()
        self.height = 0  # lines of the live view currently on screen
        self.last_key: object = None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.tty else text

    def step(self, number: int, text: str) -> None:
        self.end_live()
        self._write(f"\n{self._bold(f'[{number}/{self.steps}] {text}')}\n")

    def say(self, text: str = "") -> None:
        self.end_live()
        self._write("".join(f"      {line}\n" if line else "\n" for line in text.split("\n")))

    def live(self, lines: list[str], key: object, line: str) -> None:
        """Redraw ``lines`` (terminal), or print ``line`` when ``key`` changed (otherwise)."""
        if self.tty:
            width = max(40, shutil.get_terminal_size((120, 40)).columns - 1)
            up = f"\x1b[{self.height}F" if self.height else ""
            body = "".join(f"{text[:width]}\n" for text in lines)
            self._write(f"{up}\x1b[J{body}")
            self.height = len(lines)
        elif key != self.last_key:
            self._write(f"      {line}\n")
        self.last_key = key

    def end_live(self) -> None:
        self.height = 0
        self.last_key = None


# ----------------------------------------------------------------------------- the live view


def slot_versions(status: dict[str, Any]) -> dict[str, str]:
    """Slot letter -> the version it runs, from the status."""
    stable = status.get("stableSlot") or "a"
    other = "b" if stable == "a" else "a"
    versions = {stable: status.get("stableVersion") or "-"}
    if status.get("candidateVersion") and status.get("phase") != "Succeeded":
        versions[other] = status["candidateVersion"]
    return versions


def gateway_lines(cfg: DemoConfig, status: dict[str, Any], stats: dict[str, Any]) -> list[str]:
    """What the lab gateway saw: user requests served and mirrored copies, per slot."""
    elapsed = max(0.0, time.time() - float(stats.get("since") or time.time()))
    errors, total = user_errors(stats)
    lines = [
        f"  gateway, last {elapsed:.0f}s at {cfg.rps:g} req/s: {total} user requests, "
        f"{errors} answered 5xx"
    ]
    versions = slot_versions(status)
    backends = stats.get("backends") or {}
    for slot in ("a", "b"):
        b = backends.get(f"{cfg.rollout}-{slot}") or {}
        if not b:
            continue
        served_5xx = sum(n for c, n in (b.get("codes") or {}).items() if int(c) >= 500)
        mirrored_5xx = sum(n for c, n in (b.get("mirroredCodes") or {}).items() if int(c) >= 500)
        lines.append(
            f"    {cfg.rollout}-{slot} ({versions.get(slot, '-'):>4}): "
            f"served {b.get('served', 0):>5} ({served_5xx} x 5xx)   "
            f"mirrored copies {b.get('mirrored', 0):>5} ({mirrored_5xx} x 5xx)"
        )
    return lines


def change_line(obj: dict[str, Any], started: float) -> tuple[object, str]:
    """(what identifies the state, one line about it) for the non-terminal live view."""
    status = render.read_status(obj)
    stage = status.stage.name if status.stage else "-"
    w = status.weights
    checks = "  ".join(
        f"{r.name} {'-' if r.value is None else f'{r.value:.4g}'}"
        f"{f' ({r.bound})' if r.bound else ''} {r.verdict.value}"
        for r in status.analysis.results
    )
    key = (status.phase, stage, tuple((r.name, r.verdict) for r in status.analysis.results))
    line = (
        f"{time.monotonic() - started:>4.0f}s  {status.phase.value:<11} {stage:<9} "
        f"weight {w.candidate:>3}% mirror {w.mirror:>3}%   {checks}"
    )
    return key, line.rstrip()


@dataclass
class Followed:
    """A rollout followed to its end."""

    obj: dict[str, Any]
    seconds: float
    last_stage_pods: set[str]  # UIDs of the candidate's pods last seen in the last stage


def show_rollout(console: Console, demo: Demo, version: str) -> Followed:
    """Follow the rollout of ``version`` live until it settles."""
    started = time.monotonic()
    last_stage_pods: set[str] = set()

    def tick(obj: dict[str, Any]) -> None:
        nonlocal last_stage_pods
        now = datetime.now(UTC)
        status = obj.get("status") or {}
        generation = (obj.get("metadata") or {}).get("generation") or 0
        if (status.get("observedGeneration") or 0) < generation:
            wait = f"waiting for the operator to pick up {version}"
            console.live(["", f"  {wait} ..."], "picking-up", wait)
            return
        stages = (obj.get("spec") or {}).get("stages") or []
        stage = (status.get("stage") or {}).get("name")
        if status.get("phase") == "Progressing" and stages and stage == stages[-1]["name"]:
            candidate_slot = "b" if status.get("stableSlot", "a") == "a" else "a"
            pods = pod_uids(demo.api, demo.cfg.namespace, demo.cfg.rollout, candidate_slot)
            last_stage_pods = pods or last_stage_pods
        try:
            frame = render.render_watch(obj, now).split("\n")
            key, line = change_line(obj, started)
        except render.RenderError as exc:
            frame, key, line = [str(exc)], str(exc), str(exc)
        frame = ["", *(f"  {x}" if x else "" for x in frame), ""]
        frame += gateway_lines(demo.cfg, obj.get("status") or {}, demo.stats())
        frame.append(f"  {time.monotonic() - started:.0f}s since {version} was applied")
        console.live(frame, key, line)

    obj = demo.follow(version, tick)
    return Followed(obj, time.monotonic() - started, last_stage_pods)


# ----------------------------------------------------------------------------- the demo


def run_demo(lab: Lab, cfg: DemoConfig, console: Console) -> int:
    console.step(2, "CRDs, the Helm chart, and the operator as the chart's ServiceAccount")
    running = start_operator(lab, cfg)
    demo = Demo(lab, cfg)
    try:
        describe_install(console, lab, cfg, running)
        return rollouts(console, lab, cfg, demo, running)
    finally:
        with contextlib.suppress(httpx.HTTPError):
            demo.stop_load()
        running.operator.stop()
        demo.close()


def describe_install(console: Console, lab: Lab, cfg: DemoConfig, running: Running) -> None:
    release = running.release
    args = " ".join(release.container_args)
    console.say(
        f"helm upgrade --install {release.name} charts/modelrollout-operator "
        f"-n {release.namespace} --skip-crds\n"
        f"  values: replicas=0 (no operator pod: the lab runs no container images),\n"
        f"          watchNamespaces=[{cfg.namespace}], prometheus.url=<the lab's Prometheus>\n"
        f"The operator runs on this machine as "
        f"system:serviceaccount:{release.namespace}:{release.service_account}\n"
        f"  with the chart's arguments: {args}\n"
        f"  log: {_rel(running.operator.log_path)}"
    )


def rollouts(console: Console, lab: Lab, cfg: DemoConfig, demo: Demo, running: Running) -> int:
    ns, name = cfg.namespace, cfg.rollout
    console.step(3, f"Version 1.0 of the model, behind HTTPRoute {ns}/{name}")
    if demo.reset():
        console.say("(removed the rollout of a previous run)")
    path = demo.apply_version("1.0", with_route=True)
    console.say(f"kubectl apply -f {_rel(path)}")
    demo.wait_serving("1.0")
    console.say(
        f"1.0 serves from slot a ({name}-a): the first version has nothing to be compared with"
    )
    demo.start_load()
    console.say(f"steady load through the lab gateway: {cfg.rps:g} requests/s to /predict")

    console.step(4, "Version 1.1 (healthy): shadow -> 5% -> 25% -> 100%, checked in Prometheus")
    demo.reset_stats()
    console.say(f"kubectl apply -f {_rel(demo.apply_version('1.1'))}")
    good = show_rollout(console, demo, "1.1")
    status = good.obj.get("status") or {}
    if outcome(good.obj, "1.1") is not Outcome.PROMOTED:
        why = status.get("rollbackReason") or status.get("message")
        console.say(f"1.1 was NOT promoted: {status.get('phase')}, {why}")
        return 1
    new_slot = status.get("stableSlot") or "?"
    kept = bool(good.last_stage_pods) and (
        pod_uids(demo.api, ns, name, new_slot) == good.last_stage_pods
    )
    switch = (
        "its pod kept running through the promotion (same pod UID: no model reload)"
        if kept
        else "its pods were replaced during the promotion"
    )
    user_5xx, user_total = user_errors(demo.stats())
    console.say(
        f"1.1 promoted after {good.seconds:.0f}s: slot {new_slot} ({name}-{new_slot}) is now "
        f"the stable one;\n{switch}; the old slot was scaled to zero.\n"
        f"Users got {user_5xx} error(s) in {user_total} requests during this rollout."
    )

    console.step(5, f"Version 1.2 (faulty: {_knobs(FAULT)}): automatic rollback")
    demo.reset_stats()
    console.say(f"kubectl apply -f {_rel(demo.apply_version('1.2', FAULT))}")
    bad = show_rollout(console, demo, "1.2")
    status = bad.obj.get("status") or {}
    user_5xx, user_total = user_errors(demo.stats())
    if outcome(bad.obj, "1.2") is not Outcome.ROLLED_BACK or status.get("stableVersion") != "1.1":
        console.say(f"1.2 was NOT rolled back: {status.get('phase')}, {status.get('message')}")
        return 1
    why = render.rollback_reason(render.read_status(bad.obj))
    stage = (status.get("stage") or {}).get("name") or "-"
    console.say(
        f"1.2 rolled back after {bad.seconds:.0f}s, in stage {stage}:\n  "
        + "\n  ".join(why)
        + f"\nUsers got {user_5xx} error(s) in {user_total} requests during this rollout; "
        "1.1 serves 100% again."
    )

    console.step(6, "Summary")
    history = status.get("history") or []
    problems = plugin.verify_history(history)
    stages = " -> ".join(s["name"] for s in bad.obj["spec"]["stages"])
    console.say(
        "1.0  first version, serving from slot a\n"
        f"1.1  promoted through {stages} in {good.seconds:.0f}s; slot {new_slot} took over "
        f"by a role switch{'' if kept else ' (pods replaced)'}\n"
        f"1.2  rolled back by the analysis in stage {stage} after {bad.seconds:.0f}s: "
        f"{why[0] if why else 'no reason recorded'}\n"
        f"audit trail: {len(history)} entries, hash chain "
        + ("intact" if not problems else "BROKEN: " + "; ".join(problems))
    )
    look_around(console, lab, cfg, running)
    return 0 if not problems else 1


def look_around(console: Console, lab: Lab, cfg: DemoConfig, running: Running) -> None:
    ns, name = cfg.namespace, cfg.rollout
    query = f'sum by (version, code) (rate(model_requests_total{{namespace="{ns}"}}[1m]))'
    console.say(
        "\nLook around (the lab keeps running; the operator was stopped with this command):\n"
        "  source .venv/bin/activate; source .lab/env   # the plugin, kubectl 1.20, KUBECONFIG\n"
        f"  kubectl get mro -n {ns}\n"
        f"  kubectl modelrollout status {name} -n {ns}\n"
        f"  kubectl modelrollout history {name} -n {ns} --verify\n"
        f"  kubectl get httproute {name} -n {ns} -o yaml\n"
        f"  Prometheus: {lab.prometheus_url}/graph?g0.expr={quote(query)}\n"
        f"  operator log: {_rel(running.operator.log_path)}\n"
        f"  the manifests applied: {_rel(cfg.work_dir(lab))}/\n"
        "To steer rollouts by hand (pause, resume, promote, abort, retry), run the operator "
        "again:\n"
        "  .venv/bin/python -m e2e.demo operator      (Ctrl-C stops it)\n"
        "Stop the lab: make lab-down"
    )


def run_operator(lab: Lab, cfg: DemoConfig, console: Console) -> int:
    """The operator in the foreground, as the chart's ServiceAccount, until Ctrl-C."""
    console.step(2, "CRDs, the Helm chart, and the operator as the chart's ServiceAccount")
    running = start_operator(lab, cfg)
    try:
        describe_install(console, lab, cfg, running)
        console.say(f"watching namespace {cfg.namespace}; Ctrl-C stops the operator")
        proc = running.operator.proc
        assert proc is not None
        code = proc.wait()
        console.say(f"the operator exited with status {code}; see its log")
        return 1
    finally:
        running.operator.stop()


# ----------------------------------------------------------------------------- main


def _rel(path: Path) -> str:
    """``path`` relative to the repository (where `make demo` runs), when inside it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _knobs(env: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(env.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("demo", "operator"), default="demo")
    defaults = DemoConfig()
    parser.add_argument("--namespace", default=defaults.namespace, help="the demo's namespace")
    parser.add_argument(
        "--operator-namespace",
        default=defaults.operator_namespace,
        help="the Helm release's namespace",
    )
    parser.add_argument("--release", default=defaults.release, help="the Helm release name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = DemoConfig(
        namespace=args.namespace, operator_namespace=args.operator_namespace, release=args.release
    )
    console = Console(steps=2 if args.what == "operator" else 6)
    # `kill` (SIGTERM) ends the demo like Ctrl-C: the finally blocks stop the operator.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, format="      %(message)s", stream=sys.stdout)
    logging.getLogger("e2e.lab").setLevel(logging.INFO)
    try:
        console.step(
            1, "The lab: Kubernetes 1.20 control plane, Prometheus, node simulator, gateway"
        )
        started = time.monotonic()
        lab = Lab().up()
        console.say(
            f"apiserver {lab.apiserver_url}   Prometheus {lab.prometheus_url}   "
            f"gateway {lab.gateway_url}  (ready in {time.monotonic() - started:.0f}s)"
        )
        if args.what == "operator":
            return run_operator(lab, cfg, console)
        return run_demo(lab, cfg, console)
    except KeyboardInterrupt:
        console.say("\ninterrupted: the operator and the load were stopped; the lab keeps running")
        return 130
    except (DemoError, LabError, ChartError, AssertionError) as exc:  # Timeout is one too
        console.say(f"\nThe demo failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
