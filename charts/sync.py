#!/usr/bin/env python3
"""Keep the chart's derived files in step with their single sources of truth.

    python charts/sync.py           # rewrite whatever is stale
    python charts/sync.py --check   # exit 1 and say what is stale (CI, release checks)

What is derived from what:

* ``Chart.yaml`` ``version`` and ``appVersion``  <- ``modelrollout.__version__``
  (operator/modelrollout/__init__.py): a release bumps that one line, then runs this script.
* ``charts/modelrollout-operator/crds/modelrollout.yaml``  <- ``crds/modelrollout.yaml``
  (byte copy; the CRD itself is generated from the pydantic models).
* the argocd-cm snippet in ``docs/gitops/argocd.md``  <- the Lua files in
  ``charts/modelrollout-operator/files/argocd/``.

Only the standard library is used, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = Path("charts/modelrollout-operator")
VERSION_FILE = Path("operator/modelrollout/__init__.py")
CRD_SOURCE = Path("crds/modelrollout.yaml")
CRD_COPY = CHART / "crds" / "modelrollout.yaml"
ARGOCD_DIR = CHART / "files" / "argocd"
ARGOCD_DOC = Path("docs/gitops/argocd.md")
ACTIONS = ("pause", "resume", "promote", "abort", "retry")
GROUP_KIND = "modelrollout.dev_ModelRollout"
BEGIN = "<!-- BEGIN GENERATED: argocd-cm (python charts/sync.py; do not edit by hand) -->"
END = "<!-- END GENERATED: argocd-cm -->"


class SyncError(Exception):
    """A source of truth is missing or malformed; the message says which."""


def read_version(root: Path = ROOT) -> str:
    """``__version__`` from the package's ``__init__.py``, without importing the package."""
    path = root / VERSION_FILE
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise SyncError(f'{path}: no `__version__ = "..."` assignment')


def chart_yaml_with_version(text: str, version: str) -> str:
    """Chart.yaml text with ``version`` and ``appVersion`` set to ``version``."""
    for key, value in (("version", version), ("appVersion", f'"{version}"')):
        text, count = re.subn(rf"^{key}:.*$", f"{key}: {value}", text, count=1, flags=re.M)
        if count != 1:
            raise SyncError(f"Chart.yaml has no top-level `{key}:` line")
    return text


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def _lua(root: Path, name: str) -> str:
    path = root / ARGOCD_DIR / name
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n") or text.endswith("\n\n"):
        raise SyncError(f"{path} must end with exactly one newline (YAML block scalars keep one)")
    if any(line != line.rstrip() for line in text.splitlines()):
        raise SyncError(f"{path} has trailing whitespace, which YAML block scalars cannot carry")
    return text


def argocd_snippet(root: Path = ROOT) -> str:
    """The argocd-cm ConfigMap that installs the health check and the actions."""
    actions = "discovery.lua: |\n" + _indent(_lua(root, "actions/discovery.lua"), 2)
    actions += "definitions:\n"
    for verb in ACTIONS:
        actions += f"  - name: {verb}\n    action.lua: |\n"
        actions += _indent(_lua(root, f"actions/{verb}.lua"), 6)
    return (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: argocd-cm\n"
        "  namespace: argocd\n"
        "  labels:\n"
        "    app.kubernetes.io/name: argocd-cm\n"
        "    app.kubernetes.io/part-of: argocd\n"
        "data:\n"
        f"  resource.customizations.health.{GROUP_KIND}: |\n"
        + _indent(_lua(root, "health.lua"), 4)
        + f"  resource.customizations.actions.{GROUP_KIND}: |\n"
        + _indent(actions, 4)
    )


def doc_with_snippet(doc: str, snippet: str) -> str:
    """The Argo CD doc with the generated block between its markers replaced."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise SyncError(f"{ARGOCD_DOC} lacks the markers {BEGIN!r} ... {END!r}")
    block = f"{BEGIN}\n```yaml\n{snippet}```\n"
    return doc[:start] + block + doc[end:]


def _sync_file(root: Path, rel: Path, wanted: bytes, write: bool) -> str | None:
    path = root / rel
    if path.exists() and path.read_bytes() == wanted:
        return None
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wanted)
        return f"updated {rel}"
    return f"{rel} is stale"


def sync_version(root: Path, write: bool) -> str | None:
    chart = root / CHART / "Chart.yaml"
    wanted = chart_yaml_with_version(chart.read_text(encoding="utf-8"), read_version(root))
    return _sync_file(root, CHART / "Chart.yaml", wanted.encode(), write)


def sync_crd(root: Path, write: bool) -> str | None:
    source = root / CRD_SOURCE
    if not source.is_file():
        raise SyncError(
            f"{CRD_SOURCE} is missing: generate it first (python -m modelrollout.api.crd)"
        )
    return _sync_file(root, CRD_COPY, source.read_bytes(), write)


def sync_argocd_doc(root: Path, write: bool) -> str | None:
    doc = (root / ARGOCD_DOC).read_text(encoding="utf-8")
    wanted = doc_with_snippet(doc, argocd_snippet(root))
    return _sync_file(root, ARGOCD_DOC, wanted.encode(), write)


STEPS: tuple[Callable[[Path, bool], str | None], ...] = (sync_version, sync_crd, sync_argocd_doc)


def sync(root: Path = ROOT, *, write: bool) -> tuple[list[str], list[str]]:
    """Run every step. Returns what was updated (write) or is stale (check), and the errors
    of steps that could not run (one failing step does not stop the others)."""
    outcomes: list[str] = []
    errors: list[str] = []
    for step in STEPS:
        try:
            outcome = step(root, write)
        except (SyncError, OSError) as exc:
            errors.append(str(exc))
        else:
            if outcome is not None:
                outcomes.append(outcome)
    return outcomes, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale files, change nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    outcomes, errors = sync(args.root, write=not args.check)
    for line in outcomes:
        print(line)
    for error in errors:
        print(f"sync.py: error: {error}", file=sys.stderr)
    if errors:
        return 2
    if args.check and outcomes:
        print("run `python charts/sync.py` to update them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
