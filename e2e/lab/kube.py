"""Using the lab's Kubernetes API: clients, ServiceAccount tokens, kubectl, namespaces."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.client import ApiException

from e2e.lab.components import SA_ISSUER
from e2e.lab.waiting import LabError, wait_until


class KubeAccess:
    """Helpers mixed into :class:`~e2e.lab.Lab`; they need only what is declared below."""

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    def restart_component(self, name: str) -> None:
        raise NotImplementedError

    @property
    def ca_file(self) -> Path:
        raise NotImplementedError

    @property
    def apiserver_url(self) -> str:
        raise NotImplementedError

    @property
    def bin_dir(self) -> Path:
        raise NotImplementedError

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """A kubernetes ``ApiClient``: admin (from the kubeconfig), or acting with ``token``."""
        if token is None:
            admin: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig)
            )
            return admin
        configuration = client.Configuration()
        configuration.host = self.apiserver_url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def mint_token(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration_seconds: int = 3600,
        create: bool = True,
    ) -> str:
        """A TokenRequest-minted token of ``namespace/service_account``.

        With ``create`` (the default) the ServiceAccount is created when missing.
        """
        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            if create:
                body = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=service_account))
                try:
                    core.create_namespaced_service_account(namespace, body)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=[SA_ISSUER], expiration_seconds=expiration_seconds
                )
            )
            answer = core.create_namespaced_service_account_token(
                service_account, namespace, request
            )
            if answer.status is None:
                raise LabError(f"TokenRequest for {namespace}/{service_account} returned no token")
            return str(answer.status.token)

    def write_kubeconfig(self, path: Path, *, token: str, user: str = "lab-user") -> Path:
        """Write a kubeconfig for the lab that authenticates with ``token``."""
        write_kubeconfig(path, self.apiserver_url, self.ca_file, token, user)
        return path

    def kubectl(
        self,
        *args: str,
        token: str | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``.lab/bin/kubectl`` (1.20) against the lab, as admin or with ``token``."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}"]
        if token is not None:
            argv.append(f"--token={token}")
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, input=input, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise LabError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def wait_established(self, *names: str, timeout: float = 60.0) -> None:
        """Wait until every CRD in ``names`` (``crd/x`` or ``x``) has ``Established=True``.

        Polled rather than ``kubectl wait``: kubectl 1.20 fails at once on a CRD whose
        ``status.conditions`` is not yet written, which a CRD applied a moment ago can be."""
        plain = [n.split("/", 1)[-1] for n in names]
        with self.api_client() as api_client:
            api = client.ApiextensionsV1Api(api_client)

            def established(name: str) -> bool:
                conditions = api.read_custom_resource_definition(name).status.conditions or []
                return any(c.type == "Established" and c.status == "True" for c in conditions)

            for name in plain:
                wait_until(
                    lambda: established(name),  # noqa: B023 - called before the loop moves on
                    timeout=timeout,
                    message=f"CRD {name} not Established",
                )

    def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, timeout: float = 30.0
    ) -> str:
        """Create a namespace and wait until its default ServiceAccount has a token
        secret (before that, ServiceAccount admission rejects pods)."""
        with self.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            meta = client.V1ObjectMeta(name=name, labels=labels)
            core.create_namespace(client.V1Namespace(metadata=meta))

            def default_sa_has_token() -> bool:
                return bool(core.read_namespaced_service_account("default", name).secrets)

            wait_until(
                default_sa_has_token,
                timeout=timeout,
                interval=0.1,
                message=f"namespace {name}: default ServiceAccount got no token secret",
            )
        return name

    def wait_controllers(self, timeout: float = 120.0, patience: float = 15.0) -> None:
        """Wait until the controller-manager acts again: a probe namespace gets its default
        ServiceAccount and token, then goes away.

        After apiserver restarts its watches reconnect with a growing backoff (measured: a
        token 81 s after two restarts 10 s apart). Past ``patience`` seconds the
        controller-manager is restarted instead, as a kubelet restarts one that lost its
        leader lease, and it reconnects at once."""
        name = f"lab-probe-{secrets.token_hex(3)}"
        try:
            try:
                self.create_namespace(name, timeout=patience)
            except LabError:
                self.restart_component("controller-manager")
                with self.api_client() as api_client:
                    core = client.CoreV1Api(api_client)
                    wait_until(
                        lambda: bool(core.read_namespaced_service_account("default", name).secrets),
                        timeout=timeout,
                        interval=0.2,
                        message=f"namespace {name}: default ServiceAccount got no token secret "
                        "after the controller-manager restarted",
                    )
        finally:
            self.delete_namespace(name)

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace (not waiting for its finalization)."""
        with self.api_client() as api_client:
            try:
                client.CoreV1Api(api_client).delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> None:
    """Write a kubeconfig for ``server`` (CA embedded) authenticating with ``token``."""
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lab", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
