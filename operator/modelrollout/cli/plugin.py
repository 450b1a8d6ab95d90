"""``kubectl modelrollout``: list, inspect, watch and steer ModelRollouts.

Installed as the console script ``kubectl-modelrollout``, which kubectl finds on PATH as the
plugin ``kubectl modelrollout``. Rendering lives in :mod:`modelrollout.cli.render` (pure);
this module parses arguments, talks to the apiserver and turns every failure into one clear
line on stderr and exit code 1 (no traceback).

Manual controls write two annotations that the operator handles exactly once:
``modelrollout.dev/command: <verb>:<id>`` and ``modelrollout.dev/command-by: <identity>``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from modelrollout.api.models import (
    ANNOTATION_COMMAND,
    ANNOTATION_COMMAND_BY,
    GROUP,
    PLURAL,
    TERMINAL_PHASES,
    VERSION,
    Phase,
    parse_duration,
)
from modelrollout.cli import render

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def _kube() -> tuple[Any, Any]:
    """The kubernetes ``client`` and ``config`` modules, imported on first use (fast --help).

    Typed Any: the generated client's functions are untyped.
    """
    from kubernetes import client, config

    return client, config

RESOURCE = f"{PLURAL}.{GROUP}"
CONTROL_VERBS = ("pause", "resume", "promote", "abort", "retry")
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PluginError(Exception):
    """A failure the user can act on; printed as one line, exit code 1."""


# ----------------------------------------------------------------------------- cluster access


def _default_kubeconfig_paths() -> list[Path]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def _network_reason(exc: BaseException) -> str:
    """'Connection refused' rather than three nested urllib3 reprs."""
    text = str(getattr(exc, "reason", None) or exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(0).split("] ", 1)[1].strip()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS certificate verification failed"
    if "timed out" in text.lower():
        return "timed out"
    return text.split(": ")[-1].strip() or type(exc).__name__


@dataclass
class Cluster:
    """One apiserver, reached with the kubeconfig (or in-cluster) credentials."""

    api: ApiClient
    server: str
    namespace: str  # the context's default namespace
    user: str  # the kubeconfig user (or context) name, the fallback identity

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None) -> Cluster:
        client, config = _kube()

        if kubeconfig is not None:
            path = Path(kubeconfig).expanduser()
            if not path.is_file():
                raise PluginError(f"kubeconfig {kubeconfig} does not exist")
            paths = [path]
        else:
            paths = [p for p in _default_kubeconfig_paths() if p.is_file()]
        if not paths:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
                return cls._in_cluster()
            looked = ", ".join(str(p) for p in _default_kubeconfig_paths())
            raise PluginError(
                f"no kubeconfig found (looked at {looked}); pass --kubeconfig or set KUBECONFIG"
            )
        config_file = os.pathsep.join(str(p) for p in paths)
        try:
            contexts, current = config.list_kube_config_contexts(config_file)
        except config.ConfigException as exc:
            raise PluginError(f"cannot read kubeconfig {config_file}: {exc}") from exc
        except Exception as exc:  # yaml errors and friends
            raise PluginError(f"cannot read kubeconfig {config_file}: {exc}") from exc
        chosen = current
        if context is not None:
            chosen = next((c for c in contexts or [] if c.get("name") == context), None)
            if chosen is None:
                names = ", ".join(sorted(str(c.get("name")) for c in contexts or [])) or "none"
                raise PluginError(
                    f"context {context!r} not found in kubeconfig (available: {names})"
                )
        if not chosen:
            raise PluginError(
                f"kubeconfig {config_file} has no current context; pass --context"
            )
        ctx = chosen.get("context") or {}
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=config_file,
                context=chosen.get("name"),
                client_configuration=configuration,
                persist_config=False,
            )
        except Exception as exc:
            raise PluginError(f"cannot use kubeconfig {config_file}: {exc}") from exc
        configuration.retries = 1
        return cls(
            api=client.ApiClient(configuration),
            server=str(configuration.host),
            namespace=str(ctx.get("namespace") or "default"),
            user=str(ctx.get("user") or chosen.get("name") or "unknown"),
        )

    @classmethod
    def _in_cluster(cls) -> Cluster:
        client, config = _kube()

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise PluginError(f"no kubeconfig found and in-cluster config failed: {exc}") from exc
        try:
            namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
        except OSError:
            namespace = "default"
        configuration.retries = 1
        return cls(
            api=client.ApiClient(configuration),
            server=str(configuration.host),
            namespace=namespace,
            user="serviceaccount",
        )

    # -- error translation

    def _fail(
        self, exc: Exception, namespace: str | None = None, name: str | None = None
    ) -> NoReturn:
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException):
            message = ""
            details: Mapping[str, Any] = {}
            try:
                body = json.loads(exc.body or "{}")
                message = str(body.get("message") or "")
                details = body.get("details") or {}
            except (ValueError, AttributeError):
                message = str(exc.body or "")[:200]
            if exc.status == 404:
                if name is not None and details.get("name") == name:
                    raise PluginError(
                        f'modelrollout "{name}" not found in namespace "{namespace}"'
                    ) from None
                raise PluginError(
                    f"the cluster at {self.server} does not serve {RESOURCE}: "
                    "is the ModelRollout CRD installed?"
                ) from None
            if exc.status == 401:
                raise PluginError(
                    f"unauthorized at {self.server}: the kubeconfig credentials were refused"
                ) from None
            if exc.status == 403:
                raise PluginError(f"forbidden: {message or exc.reason}") from None
            raise PluginError(
                f"the apiserver at {self.server} answered {exc.status} {exc.reason}: {message}"
            ) from None
        raise PluginError(
            f"cannot reach the cluster at {self.server}: {_network_reason(exc)}"
        ) from None

    def _call(self, fn: Any, *args: Any, namespace: str | None = None, name: str | None = None,
              **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except (ApiException, HTTPError, OSError) as exc:
            self._fail(exc, namespace, name)

    # -- operations

    def _objects(self) -> Any:
        client, _ = _kube()
        return client.CustomObjectsApi(self.api)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            self._objects().get_namespaced_custom_object,
            GROUP, VERSION, namespace, PLURAL, name,
            namespace=namespace, name=name, _request_timeout=REQUEST_TIMEOUT,
        )
        return result

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        api = self._objects()
        if namespace is None:
            result = self._call(
                api.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                _request_timeout=REQUEST_TIMEOUT,
            )
        else:
            result = self._call(
                api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                namespace=namespace, _request_timeout=REQUEST_TIMEOUT,
            )
        return list(result.get("items") or [])

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            self._objects().patch_namespaced_custom_object,
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"annotations": annotations}},
            namespace=namespace, name=name,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
        return result

    def whoami(self) -> str:
        """The authenticated user (SelfSubjectReview, 1.28+), else the kubeconfig user name."""
        client, _ = _kube()
        try:
            review = client.AuthenticationV1Api(self.api).create_self_subject_review(
                client.V1SelfSubjectReview(
                    api_version="authentication.k8s.io/v1", kind="SelfSubjectReview"
                ),
                _request_timeout=(3, 5),
            )
            username = review.status.user_info.username
        except Exception:  # 404 before 1.28, 403 when not allowed, anything else: fall back
            username = None
        return str(username) if username else self.user

    def watch(self, namespace: str, name: str, resource_version: str | None,
              events: queue.Queue[tuple[str, Any]], stop: threading.Event) -> None:
        """Feed ``events`` with (type, object) from a watch on one rollout until ``stop``.

        The stream is resumed from the last resourceVersion when the server closes it and
        restarted from a fresh GET when that version is too old (410 Gone).
        """
        from kubernetes.client.exceptions import ApiException

        watch: Any = importlib.import_module("kubernetes.watch")
        api = self._objects()
        version = resource_version
        while not stop.is_set():
            w = watch.Watch()
            started = time.monotonic()
            try:
                for event in w.stream(
                    api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=version, timeout_seconds=60,
                    _request_timeout=(REQUEST_TIMEOUT[0], 90),
                ):
                    if stop.is_set():
                        w.stop()
                        return
                    obj = event.get("raw_object") or event.get("object")
                    if event.get("type") == "ERROR":
                        raise ApiException(status=(obj or {}).get("code"), reason="watch error")
                    version = ((obj or {}).get("metadata") or {}).get("resourceVersion", version)
                    events.put((str(event.get("type")), obj))
                if time.monotonic() - started < 1.0:
                    stop.wait(1.0)  # a server that closes streams at once must not spin us
            except ApiException as exc:
                if exc.status == 410:
                    try:
                        fresh = self.get(namespace, name)
                    except PluginError as err:
                        events.put(("ERROR", err))
                        return
                    version = fresh["metadata"].get("resourceVersion")
                    events.put(("MODIFIED", fresh))
                    continue
                try:
                    self._fail(exc, namespace, name)
                except PluginError as err:
                    events.put(("ERROR", err))
                return
            except Exception as exc:
                if stop.is_set():
                    return
                try:
                    self._fail(exc, namespace, name)
                except PluginError as err:
                    events.put(("ERROR", err))
                return


# ----------------------------------------------------------------------------- commands


def _now() -> datetime:
    return datetime.now(UTC)


def command_id(now: datetime | None = None) -> str:
    """A unique command id: UTC timestamp with milliseconds plus a short random suffix."""
    now = now or _now()
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def check_control(verb: str, obj: Mapping[str, Any]) -> None:
    """Refuse, client-side and clearly, a command that cannot apply to the rollout's phase."""
    _, name = render.object_ref(obj)
    phase = render.read_status(obj).phase
    if verb == "retry":
        if phase not in (Phase.ROLLED_BACK, Phase.FAILED):
            raise PluginError(
                f'cannot retry modelrollout "{name}": retry is only possible after a rollback '
                f"or a failure, and it is {phase.value}"
            )
        return
    if phase in TERMINAL_PHASES:
        hint = " (use retry to roll the candidate out again)" if phase != Phase.SUCCEEDED else ""
        raise PluginError(
            f'cannot {verb} modelrollout "{name}": it is {phase.value}, '
            f"nothing is in progress{hint}"
        )


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def cmd_list(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else (args.namespace or cluster.namespace)
    items = cluster.list(namespace)
    if not items:
        where = "any namespace" if namespace is None else f'namespace "{namespace}"'
        _print(f"No modelrollouts found in {where}.")
        return 0
    _print(render.render_list(items, _now()))
    return 0


def cmd_status(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = args.namespace or cluster.namespace
    _print(render.render_status(cluster.get(namespace, args.name), _now()))
    return 0


def verify_history(raw_entries: list[Any]) -> list[str]:
    """Problems in the hash chain of status.history (empty = intact)."""
    from modelrollout import audit
    from modelrollout.api.models import HistoryEntry

    entries = []
    for position, raw in enumerate(raw_entries):
        try:
            entries.append(HistoryEntry.model_validate(raw))
        except ValidationError as exc:
            return [f"entry {position} cannot be read: {exc.errors()[0]['msg']}"]
    return audit.verify(entries)


def cmd_history(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = args.namespace or cluster.namespace
    obj = cluster.get(namespace, args.name)
    _print(render.render_history(obj, args.output))
    if not args.verify:
        return 0
    entries = list((obj.get("status") or {}).get("history") or [])
    problems = verify_history(entries)
    if problems:
        for problem in problems:
            sys.stderr.write(f"hash chain: {problem}\n")
        sys.stderr.write(f"hash chain of modelrollout {namespace}/{args.name}: BROKEN\n")
        return 1
    sys.stderr.write(f"hash chain: ok ({len(entries)} entries)\n")
    return 0


def cmd_control(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = args.namespace or cluster.namespace
    verb: str = args.command
    obj = cluster.get(namespace, args.name)
    check_control(verb, obj)
    actor = cluster.whoami()
    value = f"{verb}:{command_id()}"
    annotations = {ANNOTATION_COMMAND: value, ANNOTATION_COMMAND_BY: actor}
    cluster.annotate(namespace, args.name, annotations)
    _print(f'modelrollout "{args.name}" {verb} requested (command {value}, by {actor})')
    return 0


def _exit_code(obj: Mapping[str, Any]) -> int:
    return 0 if render.read_status(obj).phase == Phase.SUCCEEDED else 1


def cmd_watch(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = args.namespace or cluster.namespace
    deadline = time.monotonic() + args.timeout.total_seconds() if args.timeout else None
    obj = cluster.get(namespace, args.name)
    tty = sys.stdout.isatty()
    view = _WatchView(tty)
    view.show(obj)
    if render.is_settled(obj):
        return _exit_code(obj)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    version = (obj.get("metadata") or {}).get("resourceVersion")
    thread = threading.Thread(
        target=cluster.watch, args=(namespace, args.name, version, events, stop), daemon=True
    )
    thread.start()
    try:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise PluginError(
                    f'timed out after {render.clock(args.timeout)} waiting for modelrollout '
                    f'"{args.name}" to finish (phase {render.read_status(obj).phase.value})'
                )
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                kind, payload = events.get(timeout=wait)
            except queue.Empty:
                if tty:
                    view.show(obj)  # the clocks move even without events
                continue
            if kind == "ERROR":
                raise payload if isinstance(payload, PluginError) else PluginError(str(payload))
            if kind == "DELETED":
                raise PluginError(f'modelrollout "{args.name}" was deleted')
            obj = payload
            view.show(obj)
            if render.is_settled(obj):
                return _exit_code(obj)
    finally:
        stop.set()


class _WatchView:
    """Draws frames: redrawn in place on a terminal, appended when only changed otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.last = ""

    def show(self, obj: Mapping[str, Any]) -> None:
        now = _now()
        frame = render.render_watch(obj, now)
        if self.tty:
            sys.stdout.write("\x1b[H\x1b[2J" + frame + f"\n\n{now:%H:%M:%S} (Ctrl-C to stop)\n")
            sys.stdout.flush()
        elif frame != self.last:
            _print(f"--- {now:%Y-%m-%dT%H:%M:%SZ}\n{frame}")
        self.last = frame


# ----------------------------------------------------------------------------- arguments


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except Exception:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 90s, 10m or 1h30m"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    # The connection flags work before and after the subcommand (kubectl habits); the
    # subcommand copies use SUPPRESS so an absent flag does not overwrite one given earlier.
    def connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
        parser.add_argument("--kubeconfig", default=default, help="path to the kubeconfig file")
        parser.add_argument("--context", default=default, help="kubeconfig context to use")
        parser.add_argument(
            "-n", "--namespace", default=default,
            help="namespace (default: the context's namespace, else default)",
        )

    parser = argparse.ArgumentParser(
        prog="kubectl modelrollout",
        description="Inspect and steer ModelRollouts (modelrollout.dev/v1alpha1).",
    )
    connection_flags(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    connection_flags(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list rollouts")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="in every namespace")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("status", parents=[common], help="show one rollout in detail")
    p.add_argument("name")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("history", parents=[common], help="show the audit trail")
    p.add_argument("name")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument(
        "--verify", action="store_true",
        help="check the hash chain; exit 1 when an entry was altered or is missing",
    )
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser(
        "watch", parents=[common],
        help="follow a rollout until it finishes (exit 0 Succeeded, 1 RolledBack/Failed/timeout)",
    )
    p.add_argument("name")
    p.add_argument(
        "--timeout", type=_duration, default=None, help="give up after this long, e.g. 30m"
    )
    p.set_defaults(handler=cmd_watch)

    helps = {
        "pause": "hold the rollout where it is (traffic stays)",
        "resume": "continue a paused rollout",
        "promote": "skip the remaining stages and promote the candidate now",
        "abort": "roll back to the stable version now",
        "retry": "start the rollout of the candidate again after a rollback or failure",
    }
    for verb in CONTROL_VERBS:
        p = sub.add_parser(verb, parents=[common], help=helps[verb])
        p.add_argument("name")
        p.set_defaults(handler=cmd_control)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cluster = Cluster.connect(args.kubeconfig, args.context)
        code: int = args.handler(cluster, args)
        return code
    except PluginError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except render.RenderError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
