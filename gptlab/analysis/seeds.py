"""What runs that differ only in their seed say together: the mean of a figure with its 95%
confidence interval (Student's t), and whether two settings differ (Welch's t-test: their seeds'
variances need not be equal), with the 95% confidence interval of the difference. SciPy gives
the t distribution; it is imported when two or more seeds are there to compare."""

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and the half width of its 95% confidence interval (None for fewer than two values)."""

    mean: float | None  # None: no value to average
    half_width: float | None
    n: int

    def __str__(self) -> str:
        return self.shown(4)

    def shown(self, digits: int) -> str:
        return shown(self.mean, self.half_width, f".{digits}f")


@dataclass(frozen=True)
class Difference:
    """How a setting's mean differs from the baseline's: this mean minus the baseline's, the half
    width of the difference's 95% confidence interval and Welch's two-sided p-value (None without
    two seeds on each side, or with no spread at all on either)."""

    value: float | None
    half_width: float | None
    p: float | None

    def __str__(self) -> str:
        return shown(self.value, self.half_width, "+.4f")


def shown(value: float, half_width: float | None, spec: str) -> str:
    return format(value, spec) + ("" if half_width is None else f" ± {format(half_width, spec.lstrip('+'))}")


def interval(values: list[float]) -> Interval:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, n)
    from scipy import stats

    half_width = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, float(half_width), n)


def difference(values: list[float], baseline: list[float]) -> Difference:
    value = statistics.fmean(values) - statistics.fmean(baseline)
    if len(values) < 2 or len(baseline) < 2:
        return Difference(value, None, None)
    variances = [statistics.variance(v) / len(v) for v in (values, baseline)]
    standard_error = math.sqrt(sum(variances))
    if standard_error == 0:
        return Difference(value, None, None)
    from scipy import stats

    # Welch-Satterthwaite degrees of freedom
    df = standard_error**4 / sum(
        v**2 / (len(s) - 1) for v, s in zip(variances, (values, baseline), strict=True)
    )
    half_width = stats.t.ppf((1 + CONFIDENCE) / 2, df) * standard_error
    p = stats.ttest_ind(values, baseline, equal_var=False).pvalue
    return Difference(value, float(half_width), float(p))
