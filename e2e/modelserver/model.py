"""A real (small) scikit-learn classifier, trained at start-up on the breast-cancer data set that
ships inside scikit-learn: StandardScaler + LogisticRegression.

``shuffled_labels`` trains on permuted labels: a useless model whose score distribution is far
from the good model's (a drift the analysis must notice).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

N_FEATURES = 30


class BadInstances(ValueError):
    """The request's instances are not a list of rows of N_FEATURES numbers."""


@dataclass(frozen=True)
class Prediction:
    score: float  # probability of the positive class (1 = benign in this data set)
    label: int


class Model:
    def __init__(self, *, shuffled_labels: bool = False, seed: int = 0) -> None:
        data: Any = load_breast_cancer()
        self._x: np.ndarray[Any, np.dtype[np.float64]] = np.asarray(data.data, dtype=np.float64)
        y = np.asarray(data.target)
        if shuffled_labels:
            y = np.random.default_rng(seed + 1).permutation(y)
        self._pipeline = Pipeline(
            [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]
        ).fit(self._x, y)
        self._rows = len(self._x)

    def random_rows(self, n: int, rnd: random.Random) -> list[list[float]]:
        return [self._x[rnd.randrange(self._rows)].tolist() for _ in range(n)]

    def predict(self, matrix: np.ndarray[Any, np.dtype[np.float64]]) -> list[Prediction]:
        """Score rows already checked by validate_instances."""
        proba = self._pipeline.predict_proba(matrix)[:, 1]
        return [Prediction(score=float(p), label=int(p >= 0.5)) for p in proba]


def validate_instances(instances: object) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Check the shape and types of ``instances``; return them as a float matrix."""
    if not isinstance(instances, list) or not instances:
        raise BadInstances('"instances" must be a non-empty list of rows')
    if len(instances) > 1000:
        raise BadInstances(f'"instances" holds {len(instances)} rows; at most 1000 per request')
    for i, row in enumerate(instances):
        if not isinstance(row, list) or len(row) != N_FEATURES:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise BadInstances(f"instances[{i}] must be a list of {N_FEATURES} numbers, got {got}")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise BadInstances(f"instances[{i}][{j}] must be a number, got {v!r}")
    matrix = np.asarray(instances, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise BadInstances("instances must hold finite numbers (no NaN or infinity)")
    return matrix
