"""Side-by-side comparison of the pipeline's MLflow runs: the logic behind `dcgan compare`.

Pure pandas over the table that `dcgan.tracking.queries.search_runs` returns (MLflow's own
`mlflow.search_runs` layout: `params.<key>`, `metrics.<name>`, `tags.<name>` columns), so
it needs no store. `table()` picks and sorts the columns; `format_table()` renders them.
The command itself lives in `dcgan.tools.cli`: `dcgan compare --help`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dcgan.core.errors import UserError

DEFAULT_METRICS = ("frechet_distance", "kid", "precision", "recall", "classifier_score",
                   "probe_accuracy")
# Shown when no param differs among the runs, so the table still says what was trained.
FALLBACK_PARAMS = ("train.epochs", "train.lr")


def table(runs: pd.DataFrame, params: Sequence[str] | None = None,
          metrics: Sequence[str] | None = None, sort: str = "frechet_distance",
          descending: bool = False, show_status: bool = False,
          limit: int | None = None) -> pd.DataFrame:
    """One row per run, best first: run, exp, params, metrics, duration, run_id (, status).

    Args:
        runs: the non-empty output of `tracking.queries.search_runs`.
        params: param keys to show (`train.lr`); default: those whose values differ among
            the rows shown, else `FALLBACK_PARAMS`.
        metrics: metric names to show; default: the `DEFAULT_METRICS` these runs have. The
            sort metric is added when it is not among them.
        sort: the metric to sort by; runs without it go last in either direction.
        descending: sort from high to low.
        show_status: add a `status` column (for when unfinished runs are included).
        limit: keep only the first `limit` rows after sorting.

    Returns:
        The table: params as MLflow's strings, metrics as floats, missing values NaN.

    Raises:
        UserError: if `sort`, a param or a metric is not logged by any of `runs`.
    """
    _check_known("sort metric", [sort], _keys(runs, "metrics."))
    # Stable, so runs that tie keep search_runs' newest-first order.
    runs = runs.sort_values(f"metrics.{sort}", ascending=not descending, na_position="last",
                            kind="stable").iloc[:limit]
    params = _choose_params(runs, params)
    metrics = _choose_metrics(runs, metrics, sort)

    out = pd.DataFrame({"run": _column(runs, "tags.mlflow.runName"),
                        "exp": _column(runs, "tags.dvc_exp_name").fillna("")})
    for key in params:
        out[key] = runs[f"params.{key}"]
    for name in metrics:
        out[name] = runs[f"metrics.{name}"].astype(float)
    out["duration"] = durations(runs)
    out["run_id"] = runs["run_id"].str[:8]
    if show_status:
        out["status"] = runs["status"]
    return out.reset_index(drop=True)


def grouped(runs: pd.DataFrame, over: str = "train.seed", metrics: Sequence[str] | None = None,
            sort: str = "frechet_distance", descending: bool = False,
            limit: int | None = None) -> pd.DataFrame:
    """One row per group of runs that differ only in the param `over` (and were measured
    under one protocol): the params that tell groups apart, the values of `over`, `n`,
    and each metric's mean and sample standard deviation (`<metric>_std`; NaN for n = 1).

    Best group first by the mean of `sort`. Raises UserError for unknown names, as `table`.
    """
    over = over.removeprefix("params.")
    _check_known("param", [over], _keys(runs, "params."))
    _check_known("sort metric", [sort], _keys(runs, "metrics."))
    params = [key for key in _choose_params(runs, None) if key != over]
    metrics = _choose_metrics(runs, metrics, sort)
    frame = pd.DataFrame({key: runs[f"params.{key}"].fillna("") for key in params})
    frame["protocol"] = _column(runs, "tags.protocol").fillna("")
    keys = [*params, "protocol"]
    frame[over] = runs[f"params.{over}"]
    for name in metrics:
        frame[name] = runs[f"metrics.{name}"].astype(float)
    groups = frame.groupby(keys, sort=False, dropna=False)
    out = groups[over].agg(lambda values: ",".join(values.astype(str))).to_frame()
    out["n"] = groups.size()
    for name in metrics:
        out[name] = groups[name].mean()
        out[f"{name}_std"] = groups[name].std(ddof=1)
    out = out.reset_index().drop(columns="protocol")
    out = out.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
    return out.iloc[:limit].reset_index(drop=True)


def format_grouped(df: pd.DataFrame, csv: bool = False) -> str:
    """Render `grouped()`'s output: `mean ± std` with 4 significant digits, or full CSV."""
    if csv:
        return df.to_csv(index=False).rstrip("\n")
    text = df.copy()
    for name in [c.removesuffix("_std") for c in df.columns if c.endswith("_std")]:
        text[name] = [("-" if pd.isna(m) else f"{m:.4g}" if pd.isna(s) else f"{m:.4g} ± {s:.2g}")
                      for m, s in zip(df[name], df[f"{name}_std"], strict=True)]
        text = text.drop(columns=f"{name}_std")
    return text.to_string(index=False)


def protocol_warning(runs: pd.DataFrame) -> str | None:
    """One line when `runs` were measured under more than one protocol (the classifier,
    N, reference split or seed of the metrics differ), else None."""
    stamps = _column(runs, "tags.protocol")
    if stamps.isna().all():
        return None
    kinds = sorted(stamps.fillna("no protocol stamp (measured before stamps)").unique())
    if len(kinds) < 2:
        return None
    return (f"warning: these runs were measured under {len(kinds)} protocols "
            f"({' | '.join(kinds)}), so their metrics do not compare; rerun `dvc repro "
            "evaluate` on one classifier, or filter with --dataset")


def format_table(df: pd.DataFrame, csv: bool = False) -> str:
    """Render `table()`'s output: aligned text with 4 significant digits, or full-precision CSV.

    Missing values read `-` in the text and are empty in the CSV. No trailing newline.
    """
    if csv:
        return df.to_csv(index=False).rstrip("\n")
    return df.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")


def durations(runs: pd.DataFrame) -> pd.Series:
    """Each run's training time as `1h02m05s`, `5m37s` or `42s`; NaN when unknown.

    From the `train_seconds` metric; runs logged before it existed fall back to the run's
    wall-clock span, which also covers the generate and evaluate stages that follow train.
    """
    seconds = _column(runs, "metrics.train_seconds").astype(float)
    span = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
    return seconds.fillna(span).map(format_duration, na_action="ignore")


def format_duration(seconds: float) -> str:
    """Whole seconds as `1h02m05s`, `5m37s` or `42s`."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _choose_params(runs: pd.DataFrame, params: Sequence[str] | None) -> list[str]:
    """The requested param keys (checked), else those that differ among `runs`."""
    available = _keys(runs, "params.")
    if params is not None:
        keys = [key.removeprefix("params.") for key in params]
        _check_known("param", keys, available)
        return keys
    # dropna=False: a param that some runs lack (logged by a newer version) also differs.
    differing = [key for key in sorted(available)
                 if runs[f"params.{key}"].nunique(dropna=False) > 1]
    return differing or [key for key in FALLBACK_PARAMS if key in available]


def _choose_metrics(runs: pd.DataFrame, metrics: Sequence[str] | None, sort: str) -> list[str]:
    """The requested metric names (checked), else the defaults these runs have; plus `sort`."""
    available = _keys(runs, "metrics.")
    if metrics is not None:
        names = [name.removeprefix("metrics.") for name in metrics]
        _check_known("metric", names, available)
    else:
        names = [name for name in DEFAULT_METRICS
                 if name in available and runs[f"metrics.{name}"].notna().any()]
    return names if sort in names else [*names, sort]


def _keys(runs: pd.DataFrame, prefix: str) -> list[str]:
    """The names of the columns that start with `prefix`, without it."""
    return [col.removeprefix(prefix) for col in runs.columns if col.startswith(prefix)]


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """`runs[name]`, or all-missing when no run has it (mlflow only makes columns it fills)."""
    if name in runs.columns:
        return runs[name]
    return pd.Series(float("nan"), index=runs.index, dtype=object)


def _check_known(kind: str, names: Sequence[str], available: Sequence[str]) -> None:
    """Raise UserError naming the first of `names` not in `available`, and listing those."""
    unknown = [name for name in names if name not in available]
    if unknown:
        listing = ", ".join(sorted(available)) or "none"
        raise UserError(f"unknown {kind} {unknown[0]!r}: no run logged it; available: {listing}")
