"""The plugin's commands against a fake apiserver on 127.0.0.1: arguments, patches, errors."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_apiserver import FakeApiserver, running, write_kubeconfig
from rollout_samples import make_rollout

from modelrollout import audit
from modelrollout.api.models import HistoryEntry
from modelrollout.cli import plugin

COMMAND = re.compile(r"^(pause|resume|promote|abort|retry):\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}$")


@pytest.fixture
def api() -> Iterator[FakeApiserver]:
    fake = FakeApiserver()
    fake.add(make_rollout())
    with running(fake):
        yield fake


@pytest.fixture
def kubeconfig(api: FakeApiserver, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "config", api.url)


def run(kubeconfig: Path | None, *args: str) -> int:
    argv = ["--kubeconfig", str(kubeconfig), *args] if kubeconfig else list(args)
    return plugin.main(argv)


# ----------------------------------------------------------------------------- arguments


def test_connection_flags_work_before_and_after_the_command() -> None:
    parser = plugin.build_parser()
    before = parser.parse_args(["-n", "a", "--context", "c", "status", "x"])
    after = parser.parse_args(["status", "x", "-n", "a", "--context", "c"])
    for args in (before, after):
        assert (args.namespace, args.context, args.name) == ("a", "c", "x")
    assert (
        parser.parse_args(["-n", "a", "status", "x"]).namespace == "a"
    )  # not reset by the subcommand


def test_bad_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plugin.build_parser().parse_args(["watch", "x", "--timeout", "soon"])
    assert exit_info.value.code == 2
    assert "'soon' is not a duration such as 90s, 10m or 1h30m" in capsys.readouterr().err


def test_command_ids_are_unique_and_timestamped() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    ids = {plugin.command_id(now) for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("20240501T120000.123Z-") and ":" not in i for i in ids)


@pytest.mark.parametrize("phase", ["Progressing", "Paused", "Succeeded", "Idle"])
def test_retry_is_refused_unless_rolled_back_or_failed(phase: str) -> None:
    with pytest.raises(
        plugin.PluginError, match=rf"only possible after a rollback or a failure, and it is {phase}"
    ):
        plugin.check_control("retry", make_rollout(phase=phase))


@pytest.mark.parametrize("phase", ["RolledBack", "Failed"])
def test_retry_is_allowed_after_a_rollback_or_failure(phase: str) -> None:
    plugin.check_control("retry", make_rollout(phase=phase))
    with pytest.raises(plugin.PluginError, match="use retry"):
        plugin.check_control("promote", make_rollout(phase=phase))


# ----------------------------------------------------------------------------- reading


def test_status_uses_the_context_namespace(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(kubeconfig, "status", "fraud") == 0
    assert "Phase:       Progressing" in capsys.readouterr().out
    assert api.requests[-1].path.endswith("/namespaces/ml/modelrollouts/fraud")


def test_namespace_defaults_to_default_without_one_in_the_context(
    api: FakeApiserver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_kubeconfig(tmp_path / "bare", api.url, namespace=None)
    assert run(config, "status", "fraud") == 1
    assert (
        capsys.readouterr().err == 'error: modelrollout "fraud" not found in namespace "default"\n'
    )


def test_not_found_is_one_clear_line(kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(kubeconfig, "status", "nope", "-n", "prod") == 1
    captured = capsys.readouterr()
    assert captured.err == 'error: modelrollout "nope" not found in namespace "prod"\n'
    assert captured.out == ""


def test_missing_crd_is_named(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.crd_installed = False
    assert run(kubeconfig, "list") == 1
    err = capsys.readouterr().err
    assert f"the cluster at {api.url} does not serve modelrollouts.modelrollout.dev" in err
    assert "CRD installed?" in err


def test_list_in_one_namespace_and_in_all(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_rollout(phase="Succeeded")
    other["metadata"].update(namespace="team-b", name="ranker")
    api.add(other)
    assert run(kubeconfig, "list") == 0
    out = capsys.readouterr().out
    assert "fraud" in out and "ranker" not in out
    assert run(kubeconfig, "list", "-A") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [
        ["ml", "fraud", "Progressing"],
        ["team-b", "ranker", "Succeeded"],
    ]
    assert api.requests[-1].path == "/apis/modelrollout.dev/v1alpha1/modelrollouts"


def test_list_with_nothing_says_so(kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(kubeconfig, "list", "-n", "empty") == 0
    assert capsys.readouterr().out == 'No modelrollouts found in namespace "empty".\n'


# ----------------------------------------------------------------------------- history


def _sealed_history() -> list[dict[str, Any]]:
    history: list[HistoryEntry] = []
    for i, event in enumerate(["RolloutStarted", "StageEntered", "StageEntered"]):
        audit.append(
            history,
            HistoryEntry(time=datetime(2024, 5, 1, 11, i, tzinfo=UTC), event=event, reason=f"r{i}"),
        )
    return [e.model_dump(mode="json", by_alias=True) for e in history]


def test_history_verify_accepts_an_intact_chain(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.objects[("ml", "fraud")]["status"]["history"] = _sealed_history()
    assert run(kubeconfig, "history", "fraud", "--verify") == 0
    captured = capsys.readouterr()
    assert captured.err == "hash chain: ok (3 entries)\n"
    assert len(captured.out.splitlines()) == 4


def test_history_verify_catches_an_edited_entry(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = _sealed_history()
    history[1]["reason"] = "nothing to see here"
    api.objects[("ml", "fraud")]["status"]["history"] = history
    assert run(kubeconfig, "history", "fraud", "--verify", "-o", "json") == 1
    captured = capsys.readouterr()
    assert "hash mismatch" in captured.err and "BROKEN" in captured.err
    assert '"nothing to see here"' in captured.out  # the JSON stays on stdout, parsable


# ----------------------------------------------------------------------------- controls


def test_pause_patches_the_command_annotations(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(kubeconfig, "pause", "fraud") == 0
    (patch,) = api.sent("PATCH")
    assert patch.headers["content-type"] == "application/merge-patch+json"
    annotations = patch.body["metadata"]["annotations"]
    assert set(patch.body) == {"metadata"} and set(annotations) == {
        "modelrollout.dev/command",
        "modelrollout.dev/command-by",
    }
    assert COMMAND.match(annotations["modelrollout.dev/command"])
    assert annotations["modelrollout.dev/command"].startswith("pause:")
    assert (
        annotations["modelrollout.dev/command-by"] == "alice"
    )  # SelfSubjectReview unknown: kubeconfig user
    assert api.sent("POST")[0].path == "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    assert 'modelrollout "fraud" pause requested (command pause:' in capsys.readouterr().out


def test_identity_comes_from_self_subject_review_when_served(
    api: FakeApiserver, kubeconfig: Path
) -> None:
    api.whoami = "alice@example.com"
    assert run(kubeconfig, "promote", "fraud") == 0
    (patch,) = api.sent("PATCH")
    assert (
        patch.body["metadata"]["annotations"]["modelrollout.dev/command-by"] == "alice@example.com"
    )


def test_two_commands_in_a_row_are_distinct(api: FakeApiserver, kubeconfig: Path) -> None:
    assert run(kubeconfig, "pause", "fraud") == 0
    assert run(kubeconfig, "pause", "fraud") == 0
    first, second = (
        p.body["metadata"]["annotations"]["modelrollout.dev/command"] for p in api.sent("PATCH")
    )
    assert first != second


def test_retry_refused_client_side_sends_nothing(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(kubeconfig, "retry", "fraud") == 1
    assert (
        "retry is only possible after a rollback or a failure, and it is Progressing"
        in capsys.readouterr().err
    )
    assert api.sent("PATCH") == []


def test_retry_after_rollback(api: FakeApiserver, kubeconfig: Path) -> None:
    api.objects[("ml", "fraud")]["status"]["phase"] = "RolledBack"
    assert run(kubeconfig, "retry", "fraud") == 0
    (patch,) = api.sent("PATCH")
    assert patch.body["metadata"]["annotations"]["modelrollout.dev/command"].startswith("retry:")


# ----------------------------------------------------------------------------- watch


def test_watch_follows_until_succeeded(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.watch_events = [
        ("MODIFIED", make_rollout(stage={"index": 2, "name": "canary-25", "weight": 25})),
        ("MODIFIED", make_rollout(phase="Succeeded")),
    ]
    assert run(kubeconfig, "watch", "fraud", "--timeout", "20s") == 0
    out = capsys.readouterr().out
    frames = out.split("--- ")[1:]
    assert len(frames) == 3  # the initial GET and two changes
    assert "Succeeded" in frames[-1] and "canary-25" in frames[1]
    watch_request = next(r for r in api.requests if r.query.get("watch"))
    assert watch_request.query["fieldSelector"] == ["metadata.name=fraud"]
    assert watch_request.query["resourceVersion"] == ["100"]


def test_watch_exits_1_on_rollback(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.watch_events = [
        ("MODIFIED", make_rollout(phase="RolledBack", rollbackReason="AnalysisFailed"))
    ]
    assert run(kubeconfig, "watch", "fraud", "--timeout", "20s") == 1
    assert "Rolled back: AnalysisFailed" in capsys.readouterr().out


def test_watch_of_a_settled_rollout_returns_at_once(api: FakeApiserver, kubeconfig: Path) -> None:
    api.objects[("ml", "fraud")]["status"]["phase"] = "Succeeded"
    assert run(kubeconfig, "watch", "fraud") == 0
    assert not any(r.query.get("watch") for r in api.requests)


def test_watch_times_out(
    api: FakeApiserver, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(kubeconfig, "watch", "fraud", "--timeout", "1500ms") == 1
    assert (
        'error: timed out after 1s waiting for modelrollout "fraud" to finish (phase Progressing)'
        in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- connection errors


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_cluster_names_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = f"http://127.0.0.1:{_closed_port()}"
    config = write_kubeconfig(tmp_path / "config", server)
    assert run(config, "list") == 1
    assert (
        capsys.readouterr().err
        == f"error: cannot reach the cluster at {server}: Connection refused\n"
    )


def test_no_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert run(None, "list") == 1
    err = capsys.readouterr().err
    looked = tmp_path / "absent"
    assert err == (
        f"error: no kubeconfig found (looked at {looked}); pass --kubeconfig or set KUBECONFIG\n"
    )
    assert run(tmp_path / "typo", "list") == 1
    assert capsys.readouterr().err == f"error: kubeconfig {tmp_path / 'typo'} does not exist\n"


def test_unknown_context(kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(kubeconfig, "--context", "prod", "list") == 1
    assert (
        capsys.readouterr().err
        == "error: context 'prod' not found in kubeconfig (available: fake-ctx, other-ctx)\n"
    )


def test_other_context_brings_its_namespace(api: FakeApiserver, kubeconfig: Path) -> None:
    run(kubeconfig, "--context", "other-ctx", "status", "fraud")
    assert api.requests[-1].path.endswith("/namespaces/other/modelrollouts/fraud")


def test_console_script_prints_no_traceback(kubeconfig: Path) -> None:
    script = Path(sys.executable).with_name("kubectl-modelrollout")
    assert script.exists(), "the console script is installed with the package (pip install -e .)"
    done = subprocess.run(
        [str(script), "--kubeconfig", str(kubeconfig), "status", "missing"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == 'error: modelrollout "missing" not found in namespace "ml"\n'
