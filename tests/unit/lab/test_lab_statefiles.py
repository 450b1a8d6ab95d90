"""pods.json and Prometheus file_sd target files of the lab's data plane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.lab import statefiles
from e2e.lab.statefiles import PodRecord


def record(name: str, port: int | None, *, service: str = "svc") -> PodRecord:
    return PodRecord(
        namespace="ml",
        name=name,
        uid=f"uid-{name}",
        node="lab-node-0",
        port=port,
        pid=None if port is None else 100,
        ready=port is not None,
        restarts=0,
        service=service,
        process=port is not None,
    )


def test_pods_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "pods.json"
    records = [record("b", 4001), record("a", None)]
    statefiles.write_json_atomic(path, statefiles.pods_doc(records))
    read = statefiles.read_pods(path)
    assert list(read) == ["ml/a", "ml/b"]
    assert read["ml/b"] == records[0]
    assert statefiles.read_pods(tmp_path / "missing.json") == {}


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.json"
    statefiles.write_json_atomic(path, {"v": 1})
    statefiles.write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    statefiles.write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        statefiles.write_json_atomic(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_modelserver_targets_are_file_sd_with_one_target_per_process() -> None:
    doc = statefiles.modelserver_targets([record("b", 4001), record("a", None), record("c", 4002)])
    statefiles.validate_targets(doc)
    assert doc == [
        {
            "targets": ["127.0.0.1:4001"],
            "labels": {
                "job": "modelserver",
                "namespace": "ml",
                "pod": "b",
                "node": "lab-node-0",
                "service": "svc",
            },
        },
        {
            "targets": ["127.0.0.1:4002"],
            "labels": {
                "job": "modelserver",
                "namespace": "ml",
                "pod": "c",
                "node": "lab-node-0",
                "service": "svc",
            },
        },
    ]


def test_service_label_is_left_out_when_unknown() -> None:
    (group,) = statefiles.modelserver_targets([record("a", 1, service="")])
    assert "service" not in group["labels"]


def test_gateway_target() -> None:
    doc = statefiles.gateway_targets(8099)
    statefiles.validate_targets(doc)
    assert doc == [{"targets": ["127.0.0.1:8099"], "labels": {"job": "lab-gateway"}}]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"targets": []}, "is a list"),
        ([{"targets": ["h:1"], "extra": 1}], "only targets and labels"),
        ([{"targets": ["nohost"]}], "is not host:port"),
        ([{"targets": ["h:1"], "labels": {"a": 1}}], "labels must map strings"),
    ],
)
def test_validate_targets_names_the_problem(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        statefiles.validate_targets(doc)
