"""The lab's credentials, made with openssl: a CA, the apiserver's serving cert,
the ServiceAccount signing key pair and the admin token file."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from e2e.lab.waiting import LabError

# Names the apiserver answers to: loopback for the lab, the in-cluster names for
# tools that build URLs from the kubernetes Service.
SERVING_SANS = (
    "IP:127.0.0.1",
    "IP:10.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
ADMIN_USER = "lab-admin"


@dataclass(frozen=True)
class Pki:
    """Paths of the lab's credential files (all under ``.lab/pki``)."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def tokens_csv(self) -> Path:
        return self.dir / "tokens.csv"

    @property
    def admin_token(self) -> str:
        """The admin's bearer token (user lab-admin, group system:masters)."""
        return self.tokens_csv.read_text().split(",", 1)[0]

    def complete(self) -> bool:
        files = (self.ca_crt, self.apiserver_crt, self.apiserver_key, self.sa_key, self.sa_pub)
        return all(f.exists() for f in (*files, self.tokens_csv))

    def create(self, openssl: Path) -> None:
        """Make every file anew."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)

        def run(*args: str) -> None:
            proc = subprocess.run(
                [str(openssl), *args], cwd=self.dir, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise LabError(f"openssl {args[0]} failed: {proc.stderr.strip()}")

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
            "-subj", "/CN=modelrollout-lab-ca", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
            "-keyout", "apiserver.key", "-out", "apiserver.csr")  # fmt: skip
        (self.dir / "apiserver.ext").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            f"subjectAltName={','.join(SERVING_SANS)}\n"
        )
        run("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-sha256", "-days", "3650", "-extfile", "apiserver.ext",
            "-out", "apiserver.crt")  # fmt: skip
        run("genrsa", "-out", "sa.key", "2048")
        run("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        token = secrets.token_hex(24)
        self.tokens_csv.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        for secret in (self.ca_key, self.apiserver_key, self.sa_key, self.tokens_csv):
            secret.chmod(0o600)
