"""docs/performance.md: "scipy is imported on the first comparison check (Mann-Whitney) and
adds ~60 MiB once". The operator's modules and a threshold verdict leave scipy unimported; the
first Mann-Whitney test imports it. Run in a fresh interpreter, since this one may have
imported scipy already."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import modelrollout.app, modelrollout.handlers, modelrollout.cli.operator
from modelrollout.api.models import Direction
from modelrollout.metrics import statistics, verdicts
verdicts.judge_value(0.001, None, 0.01)
print("before", "scipy" in sys.modules)
statistics.mann_whitney_p([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], Direction.INCREASE)
print("after", "scipy" in sys.modules)
"""


def test_scipy_is_imported_only_by_the_first_comparison() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["before", "False", "after", "True"], done.stdout
