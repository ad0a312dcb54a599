"""Run-to-run noise: replicate statistics, the lab's measured seed-to-seed floor, the interval rule.

Pure functions over numbers (standard library only); minimind/verdict.py calls them, the
lifecycle writes what they compute (runs/V/seeds.json) and shows it.

Two sources of noise separate two runs of an experiment and its base:
- the evaluation sample (which documents, which probes): the paired bootstrap of
  minimind/verdict.py measures it from per-item data;
- training itself (initialisation, data order): only runs that differ in their seed alone
  measure it. An experiment with `--seeds N` has N such replicates.

The rule, per metric (`difference`):
- **Both sides have 2 or more replicates**: a Welch t interval of the difference of the
  replicate means. Its variance is the seed-to-seed variance of each side's mean
  (s²/n) plus the evaluation-sample variance of the difference of the means (the
  paired bootstrap's, over the items every replicate measured); the degrees of freedom
  are Welch–Satterthwaite's, the evaluation part counting as many. Why not a two-level
  bootstrap (seeds, then items): with 2 to 5 seeds a bootstrap over seeds resamples from
  so few values (3 seeds: 10 distinct resamples) that it underestimates the spread by
  (n-1)/n and ignores how uncertain a spread from 3 values is; the t quantile with few
  degrees of freedom (4.3 at 2, 2.8 at 4) widens the interval as far as so few seeds warrant.
- **A side has one run, and the lab has measured its noise floor**: the floor is the
  pooled seed-to-seed standard deviation σ of the metric over every replicated
  experiment of the lab (`pooled_floor`), with Σ(n_i - 1) degrees of freedom. The
  difference of a side of n runs and one of m then has the variance σ²(1/n + 1/m) plus the
  evaluation-sample variance, and a t interval at the pooled degrees of freedom.
- **Not measured**: None here; the caller keeps its evaluation-sample interval and the
  fixed relative floor (`eval.min_effect`, 1%), and says that run-to-run noise is unmeasured.

σ is in the metric's own units: the floor assumes the lab's experiments are of a comparable
size (a loss at dim 64 and one at dim 512 spread differently). `history` lists the
experiments each floor was measured on, so a reader sees what it rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

REPLICATES = "replicates"   # rule names, as analysis.json and the record keep them
FLOOR = "floor"
SAMPLE = "sample"


# --- Student's t (no scipy: the CLI and status must stay light) -------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on t_cdf; p in (0, 1))."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


# --- one experiment's replicates ---------------------------------------------------------

def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def sample_sd(values: Sequence[float]) -> Optional[float]:
    """The sample standard deviation (n - 1), None for fewer than 2 values."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Spread:
    """One metric over one experiment's replicates."""

    n: int
    mean: float
    sd: Optional[float]        # None with one replicate
    low: float                 # the smallest replicate value
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "min": self.low, "max": self.high}


def spread(values: Sequence[float]) -> Optional[Spread]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    return Spread(n=len(vals), mean=mean(vals), sd=sample_sd(vals), low=min(vals), high=max(vals))


# --- the lab's floor -----------------------------------------------------------------------

@dataclass(frozen=True)
class Floor:
    """The pooled seed-to-seed standard deviation of one metric over the lab's replicated experiments."""

    metric: str
    sd: float
    df: int                             # Σ (n_i - 1)
    experiments: tuple[str, ...]        # the versions it was measured on

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "sd": self.sd, "df": self.df, "experiments": list(self.experiments)}

    def describe(self) -> str:
        return f"sd {self.sd:.3g} over {', '.join(self.experiments)} ({self.df} df)"


def pooled_floor(metric: str, groups: dict[str, Sequence[float]]) -> Optional[Floor]:
    """Pool the within-experiment variance of `metric` over experiments with 2 or more replicates:
    σ² = Σ Σ (x_ij - x̄_i)² / Σ (n_i - 1). None when no experiment has 2 values."""
    ss, df, used = 0.0, 0, []
    for version, values in groups.items():
        vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(vals) < 2:
            continue
        m = mean(vals)
        ss += sum((v - m) ** 2 for v in vals)
        df += len(vals) - 1
        used.append(version)
    if not df:
        return None
    return Floor(metric=metric, sd=math.sqrt(ss / df), df=df, experiments=tuple(used))


def lab_floor(per_experiment: dict[str, dict[str, Sequence[float]]]) -> dict[str, Floor]:
    """{metric: Floor} from {version: {metric: [one value per replicate]}}."""
    metrics: dict[str, dict[str, Sequence[float]]] = {}
    for version, by_metric in per_experiment.items():
        for metric, values in by_metric.items():
            metrics.setdefault(metric, {})[version] = values
    out = {}
    for metric, groups in metrics.items():
        floor = pooled_floor(metric, groups)
        if floor is not None:
            out[metric] = floor
    return out


# --- the interval rule ---------------------------------------------------------------------

def _interval(delta: float, var: float, df: float, confidence: float) -> tuple[float, float, float]:
    if var <= 0:
        return delta, delta, 0.0
    half = t_quantile(1 - (1 - confidence) / 2, df) * math.sqrt(var)
    return delta - half, delta + half, half


def difference(new: Sequence[float], base: Sequence[float], confidence: float, item_var: float = 0.0,
               floor: Optional[Floor] = None) -> Optional[dict[str, Any]]:
    """The interval of mean(new) - mean(base) with the seed-to-seed noise in it (the module's rule).

    `item_var`: the evaluation-sample variance of that difference (the paired bootstrap's).
    Returns {delta, low, high, confidence, rule, df, n_new, n_base, seed_sd}, or None when the
    seed noise is not known (a side with one run and no floor): the caller's sample rule applies."""
    new, base = [float(v) for v in new], [float(v) for v in base]
    if not new or not base:
        return None
    delta = mean(new) - mean(base)
    n, m = len(new), len(base)
    if n >= 2 and m >= 2:
        a, b = sample_sd(new) ** 2 / n, sample_sd(base) ** 2 / m  # type: ignore[operator]
        seed_var = a + b
        var = seed_var + max(item_var, 0.0)
        parts = (a * a / (n - 1) if a else 0.0) + (b * b / (m - 1) if b else 0.0)
        df = var * var / parts if parts else 1e6  # no seed spread at all: only the evaluation part
        low, high, half = _interval(delta, var, df, confidence)
        return {"delta": delta, "low": low, "high": high, "half": half, "confidence": confidence, "rule": REPLICATES,
                "df": df, "n_new": n, "n_base": m,
                "seed_sd": math.sqrt((sample_sd(new) ** 2 * (n - 1) + sample_sd(base) ** 2 * (m - 1)) / (n + m - 2))}  # type: ignore[operator]
    if floor is None:
        return None
    seed_var = floor.sd ** 2 * (1 / n + 1 / m)
    var = seed_var + max(item_var, 0.0)
    # Satterthwaite: the evaluation part is known from many items; the seed part has the floor's df.
    df = var * var / (seed_var * seed_var / floor.df) if seed_var else 1e6
    low, high, half = _interval(delta, var, df, confidence)
    return {"delta": delta, "low": low, "high": high, "half": half, "confidence": confidence, "rule": FLOOR,
            "df": df, "n_new": n, "n_base": m, "seed_sd": floor.sd, "floor": floor.to_dict()}


def level(values: Sequence[float], confidence: float, item_var: float = 0.0,
          floor: Optional[Floor] = None) -> Optional[dict[str, Any]]:
    """The interval of one side's mean against a fixed target (a criterion like `recall > 0.2`):
    a t interval over its replicates, or its one run with the floor's spread; None when unknown."""
    values = [float(v) for v in values]
    if not values:
        return None
    n = len(values)
    if n >= 2:
        sd = sample_sd(values) or 0.0
        seed_var = sd * sd / n
        var = seed_var + max(item_var, 0.0)
        df = var * var / (seed_var * seed_var / (n - 1)) if seed_var else 1e6
        rule, seed_sd = REPLICATES, sd
    elif floor is not None:
        seed_var = floor.sd ** 2
        var = seed_var + max(item_var, 0.0)
        df = var * var / (seed_var * seed_var / floor.df) if seed_var else 1e6
        rule, seed_sd = FLOOR, floor.sd
    else:
        return None
    low, high, half = _interval(mean(values), var, df, confidence)
    out = {"value": mean(values), "low": low, "high": high, "half": half, "confidence": confidence, "rule": rule,
           "df": df, "n_new": n, "seed_sd": seed_sd}
    if rule == FLOOR:
        out["floor"] = floor.to_dict()  # type: ignore[union-attr]
    return out


def seeds_needed(sd: float, effect: float, confidence: float = 0.95, most: int = 64) -> Optional[int]:
    """The fewest seeds per side for which a true difference of `effect` (absolute) gives a t
    interval (both sides n seeds, spread `sd`) whose expected half-width is below `effect`: the
    smallest change n seeds a side can tell from seed noise. None beyond `most`."""
    if sd <= 0:
        return 1
    for n in range(2, most + 1):
        half = t_quantile(1 - (1 - confidence) / 2, 2 * n - 2) * sd * math.sqrt(2 / n)
        if half < abs(effect):
            return n
    return None


def detectable(sd: float, n: int, m: int, df: float, confidence: float = 0.95) -> float:
    """The half-width of the interval of a difference of a side of n runs and one of m, from a
    seed spread `sd` known with `df` degrees of freedom: the smallest change that can show."""
    return t_quantile(1 - (1 - confidence) / 2, df) * sd * math.sqrt(1 / n + 1 / m)


def values_of(rows: Iterable[Optional[float]]) -> list[float]:
    return [float(v) for v in rows if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
