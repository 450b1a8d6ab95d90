"""The operator never takes over a Deployment or Service it did not create."""

from __future__ import annotations

from typing import Any

import pytest

from modelrollout.api.models import ModelRef, ModelRolloutSpec
from modelrollout.kube.client import KubeClient, SlotNotOwned, check_owned

OWNER = {"metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1"}}


def obj(name: str, owner_uid: str | None) -> dict[str, Any]:
    refs = [{"kind": "ModelRollout", "name": "fraud", "uid": owner_uid}] if owner_uid else []
    return {"metadata": {"name": name, "namespace": "ml", "ownerReferences": refs}}


def test_owned_objects_pass_and_foreign_ones_are_refused_with_a_clear_message() -> None:
    check_owned(obj("fraud-a", "u-1"), OWNER, "Deployment")
    with pytest.raises(
        SlotNotOwned, match="Deployment ml/fraud-a exists and is not owned by ModelRollout fraud"
    ):
        check_owned(obj("fraud-a", None), OWNER, "Deployment")
    with pytest.raises(SlotNotOwned):  # an earlier ModelRollout of the same name (other uid)
        check_owned(obj("fraud-a", "u-0"), OWNER, "Deployment")


class Writes(KubeClient):
    """KubeClient whose reads are canned and whose writes are recorded."""

    def __init__(self, deployment: dict[str, Any] | None) -> None:
        self.deployment = deployment
        self.cache = None
        self.written: list[str] = []

    async def get_deployment(
        self, namespace: str, name: str, *, confirm_absence: bool = False
    ) -> dict[str, Any] | None:
        return self.deployment

    async def _ensure_service(self, owner: dict[str, Any], wanted: dict[str, Any]) -> bool:
        return False


SPEC = ModelRolloutSpec.model_validate(
    {
        "model": {"name": "fraud", "version": "2", "uri": "s3://m/2"},
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "fraud"}},
    }
)


async def test_ensure_slot_refuses_a_foreign_deployment_before_writing() -> None:
    client = Writes({**obj("fraud-b", None), "spec": {"replicas": 3, "template": {}}})
    with pytest.raises(SlotNotOwned):
        await client.ensure_slot(
            OWNER, SPEC, "b", ModelRef(name="fraud", version="2", uri="s3://m/2"), 1
        )


async def test_scale_slot_leaves_a_foreign_deployment_alone() -> None:
    client = Writes({**obj("fraud-b", None), "spec": {"replicas": 3}})
    assert await client.scale_slot("ml", "fraud", "b", 0) is False
