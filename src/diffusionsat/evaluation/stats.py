"""Estimates with their uncertainty: every reported number carries its spread and sample count."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Bootstrap resamples for confidence intervals; 95 % percentile intervals.
BOOTSTRAP = 200
CONFIDENCE = 0.95


@dataclass
class Estimate:
    """A metric value with its 95 % interval, spread and number of samples.

    ``std`` is the per-image standard deviation for per-image metrics, the standard deviation over
    subsets for KID/IS, or the bootstrap standard deviation for set metrics (FID).
    """

    value: float | None
    n: int
    low: float | None = None
    high: float | None = None
    std: float | None = None
    method: str = ""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def missing(cls, note: str, n: int = 0) -> Estimate:
        """A metric that could not be computed, with the reason readers see in the report."""
        return cls(value=None, n=n, method="not computed", note=note)

    def format(self, digits: int = 4) -> str:
        if self.value is None:
            return "—"
        text = f"{self.value:.{digits}g}"
        if self.low is not None and self.high is not None:
            text += f" [{self.low:.{digits}g}, {self.high:.{digits}g}]"
        return text


def mean_estimate(values: np.ndarray | list[float], seed: int = 0, resamples: int = BOOTSTRAP) -> Estimate:
    """Mean of per-image values with a bootstrap 95 % interval of the mean and the per-image std."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Estimate.missing("no finite per-image values")
    if arr.size == 1:
        return Estimate(float(arr[0]), 1, std=0.0, method="single image (no interval)")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return Estimate(
        value=float(arr.mean()), n=int(arr.size),
        low=float(np.quantile(means, alpha)), high=float(np.quantile(means, 1 - alpha)),
        std=float(arr.std(ddof=1)), method=f"mean; bootstrap {int(CONFIDENCE * 100)}% CI ({resamples} resamples)",
    )


def bootstrap_set_metric(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    resamples: int = 20,
) -> tuple[float, float | None, float | None, float | None]:
    """(value, low, high, std) of a two-set statistic (e.g. FID), resampling both sets with replacement.

    The bootstrap distribution of FID is biased upwards (duplicates shrink the covariance), so the
    interval shows the sampling spread, not an unbiased bound; reports say so.
    """
    value = statistic(real, fake)
    if resamples < 2:
        return value, None, None, None
    rng = np.random.default_rng(seed)
    samples = [
        statistic(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
        for _ in range(resamples)
    ]
    alpha = (1 - CONFIDENCE) / 2
    return value, float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha)), float(np.std(samples))


def _class_means(values: np.ndarray, groups: list[np.ndarray]) -> float:
    return float(np.mean([values[g].mean() for g in groups]))


def class_mean_estimate(
    values: np.ndarray | list[float], classes: np.ndarray | list[Any], seed: int = 0, resamples: int = BOOTSTRAP,
    reference: np.ndarray | list[float] | None = None,
) -> Estimate:
    """Mean over classes of the per-class mean of ``values`` (each class counts once, whatever its size).

    With ``reference`` (per-image values of the same records, e.g. the real images' hits), the
    estimate is the ratio class-mean(values) / class-mean(reference). The interval comes from a
    bootstrap stratified by class (images resampled within each class; for a ratio, the same
    records for both, so the pairing is kept); ``std`` is the spread of the per-class means.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    labels = np.asarray(classes).ravel()
    if arr.size != labels.size or (reference is not None and np.asarray(reference).size != arr.size):
        raise ValueError(f"{arr.size} values for {labels.size} class labels: they must be aligned")
    if arr.size == 0:
        return Estimate.missing("no images")
    groups = [np.flatnonzero(labels == c) for c in dict.fromkeys(labels.tolist())]
    ref = None if reference is None else np.asarray(reference, dtype=np.float64).ravel()

    def statistic(idx: list[np.ndarray]) -> float:
        value = _class_means(arr, idx)
        if ref is None:
            return value
        base = _class_means(ref, idx)
        return value / base if base > 0 else float("nan")

    value = statistic(groups)
    per_class = [arr[g].mean() for g in groups] if ref is None else [
        arr[g].mean() / ref[g].mean() if ref[g].mean() > 0 else np.nan for g in groups]
    kind = "ratio of class-averaged means" if ref is not None else "mean over classes of per-class means"
    note = f"{len(groups)} classes"
    if ref is not None and not math.isfinite(value):
        return Estimate.missing("the reference rate is 0 in every class", n=int(arr.size))
    if arr.size == 1 or resamples < 2:
        return Estimate(value, int(arr.size), std=float(np.nanstd(per_class)), method=kind, note=note)
    rng = np.random.default_rng(seed)
    samples = np.asarray([statistic([g[rng.integers(0, g.size, g.size)] for g in groups]) for _ in range(resamples)])
    samples = samples[np.isfinite(samples)]
    alpha = (1 - CONFIDENCE) / 2
    low, high = (float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))) if samples.size else (None, None)
    return Estimate(
        value=value, n=int(arr.size), low=low, high=high, std=float(np.nanstd(per_class)),
        method=f"{kind}; class-stratified bootstrap {int(CONFIDENCE * 100)}% CI ({resamples} resamples)", note=note,
    )
