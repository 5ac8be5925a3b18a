"""The `dcgan` command: tools for working with the pipeline's results from a terminal.

Run as `dcgan COMMAND ...` (the console script pyproject.toml installs) or
`python -m dcgan COMMAND ...`; `dcgan --help` lists the commands. Each command is one
`_add_<command>` function that declares its arguments and sets its handler; user errors
print one `error: ...` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from dcgan.core.errors import UserError
from dcgan.tools import compare
from dcgan.tools.arguments import names, positive_int, run_command
from dcgan.tools.cli_use import add_use


def main(argv: list[str] | None = None) -> None:
    """Run the command `argv` names (default: the command line); see `run_command`."""
    run_command(build_parser(), argv)


def build_parser() -> argparse.ArgumentParser:
    """The `dcgan` parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="dcgan", description="Tools for the DCGAN pipeline's results.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_compare(commands)
    _add_rebuild(commands)
    _add_sync(commands)
    _add_preset(commands)
    add_use(commands)
    _add_train_worker(commands)
    return parser


def _add_compare(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan compare`."""
    parser = commands.add_parser(
        "compare", help="compare MLflow runs side by side",
        description="Compare the pipeline's MLflow runs side by side, best first. The store is "
                    "$MLFLOW_TRACKING_URI, else ./mlflow.db; the experiment "
                    "$MLFLOW_EXPERIMENT_NAME, else dcgan.")
    parser.add_argument("--dataset", metavar="NAME", help="only runs of this dataset (its tag)")
    parser.add_argument("--sort", metavar="METRIC", default="frechet_distance",
                        help="metric to sort by (default: %(default)s); runs without it go last")
    parser.add_argument("--desc", action="store_true", help="sort descending (default: ascending)")
    fallback, defaults = ",".join(compare.FALLBACK_PARAMS), ", ".join(compare.DEFAULT_METRICS)
    parser.add_argument("--params", metavar="A,B", type=names,
                        help="param keys to show, e.g. train.lr,train.epochs (default: those "
                             f"that differ among the runs shown, else {fallback})")
    parser.add_argument("--metrics", metavar="A,B", type=names,
                        help=f"metrics to show (default: those of {defaults} that the runs have)")
    parser.add_argument("--all", action="store_true",
                        help="include unfinished (RUNNING, FAILED, KILLED) runs, with their status")
    parser.add_argument("--limit", metavar="N", type=positive_int,
                        help="show only the first N runs after sorting")
    parser.add_argument("--csv", action="store_true",
                        help="print CSV (full precision) instead of an aligned table; the summary "
                             "line goes to stderr")
    parser.add_argument("--group-by", metavar="PARAM", nargs="?", const="train.seed",
                        help="one row per group of runs that differ only in PARAM (default "
                             "train.seed): each metric's mean ± std and n")
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> None:
    """Print a summary line and the comparison table of the store's runs.

    Raises:
        UserError: if the store or experiment is missing, no run matches, or a name is unknown.
    """
    # mlflow takes seconds to import; --help should not wait
    from dcgan.tracking.queries import search_runs
    from dcgan.tracking.store import experiment_name, tracking_uri

    runs = search_runs(dataset=args.dataset, finished_only=not args.all)
    if runs.empty:
        raise UserError(_no_runs(args, tracking_uri(), experiment_name()))
    if args.group_by:
        df = compare.grouped(runs, over=args.group_by, metrics=args.metrics, sort=args.sort,
                             descending=args.desc, limit=args.limit)
        shown = runs
    else:
        df = compare.table(runs, params=args.params, metrics=args.metrics, sort=args.sort,
                           descending=args.desc, show_status=args.all, limit=args.limit)
        shown = runs[runs["run_id"].str[:8].isin(df["run_id"])]
    summary = _summary(len(df), len(runs), tracking_uri(), args)
    # With --csv, stdout stays pure CSV so it can be piped or redirected to a file.
    print(summary, file=sys.stderr if args.csv else sys.stdout)
    warning = compare.protocol_warning(shown)
    if warning:
        print(warning, file=sys.stderr)
    formatted = (compare.format_grouped(df, csv=args.csv) if args.group_by
                 else compare.format_table(df, csv=args.csv))
    print(formatted)


def _add_rebuild(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan rebuild`."""
    parser = commands.add_parser(
        "rebuild", help="print the commands that recreate a run's model",
        description="Print the shell commands that recreate an MLflow run's generator: clone "
                    "this repo, check out the run's git_commit, run the pipeline with the "
                    "run's params as a DVC experiment, and check the generator's md5 against "
                    "the run's generator_md5 tag.")
    parser.add_argument("run_id", metavar="RUN_ID",
                        help="the run's id, or its first 4+ characters (`dcgan compare` shows 8)")
    parser.set_defaults(handler=_rebuild)


def _rebuild(args: argparse.Namespace) -> None:
    """Print the commands that rebuild the run.

    Raises:
        UserError: if the id matches no run or several, or the run lacks what a rebuild needs.
    """
    from dcgan.tools import rebuild
    from dcgan.tracking.queries import find_run
    from dcgan.tracking.store import repo_root

    run = find_run(args.run_id)
    print("\n".join(rebuild.commands(run.info.run_id, run.info.run_name, run.data.params,
                                     run.data.tags, repo_root())))


def _add_sync(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan sync`."""
    parser = commands.add_parser(
        "sync", help="make the MLflow store show the DVC outputs",
        description="Run dvc.yaml's track stage command: find or make the MLflow run of the "
                    "generator in the DVC outputs and log what it lacks (history, curves, "
                    "grids, files, metrics, the registered model and the best-<dataset> "
                    "alias). `dvc repro` runs it wherever the stage's output is absent "
                    "(a fresh clone, `dvc pull`, `dvc exp apply`, `dvc checkout`); run it "
                    "by hand when the store was deleted or MLFLOW_TRACKING_URI names another "
                    "one. A second sync adds nothing.")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                        help="the project clone (default: the current directory)")
    parser.set_defaults(handler=_sync)


def _sync(args: argparse.Namespace) -> None:
    """Run the track stage's command in the clone.

    Raises:
        UserError: if the clone has no DVC pipeline with a track stage.
        SystemExit: the command's status when it fails (it has printed its error).
    """
    _run_stage(args.repo, "track")


def _run_stage(repo: Path, name: str) -> None:
    """Run stage `name`'s command from `repo`/dvc.yaml in `repo`, as DVC would.

    Raises:
        UserError: if `repo` holds no DVC pipeline with that stage.
        SystemExit: the command's status when it fails (it has printed its error).
    """
    from dcgan.runtime.stage import stage_command

    code = subprocess.run(stage_command(repo, name), shell=True, cwd=repo).returncode
    if code:
        raise SystemExit(code)


def _add_preset(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan preset`."""
    parser = commands.add_parser(
        "preset", help="print a params preset as `dvc exp run` arguments",
        description="Check the preset presets/NAME.yaml against params.yaml and print it as "
                    "`-S key=value` arguments: `dvc exp run -n NAME $(dcgan preset NAME)`.")
    parser.add_argument("name", metavar="NAME", help="the preset (a file in presets/)")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                        help="the project clone (default: the current directory)")
    parser.set_defaults(handler=_preset)


def _preset(args: argparse.Namespace) -> None:
    """Print the preset's `-S` arguments.

    Raises:
        UserError: an unknown preset, or one that makes the params invalid.
    """
    from dcgan.tools import presets

    settings = presets.overrides(args.name, args.repo / "presets", args.repo / "params.yaml")
    print(presets.set_params_arguments(settings))


def _add_train_worker(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan train-worker`."""
    parser = commands.add_parser(
        "train-worker", help="join a multi-worker training as one of its other workers",
        description="Run the train stage's command from dvc.yaml as a non-chief worker of a "
                    "multi-worker training (train.distribution: multi_worker). Set TF_CONFIG "
                    "on every machine; the chief runs `dvc repro`, each other machine runs "
                    "this in its clone, with the same params.yaml and data. A worker writes "
                    "no outputs and does not log to MLflow.")
    parser.add_argument("--repo", type=Path, default=Path("."), metavar="DIR",
                        help="the project clone (default: the current directory)")
    parser.set_defaults(handler=_train_worker)


def _train_worker(args: argparse.Namespace) -> None:
    """Run the train stage's command in the clone as a non-chief worker.

    Raises:
        UserError: if TF_CONFIG is unset, invalid or makes this the chief, or the params
            do not ask for multi-worker training.
        SystemExit: the command's status when it fails (it has printed its error).
    """
    from dcgan.core.config import load_params
    from dcgan.training.cluster import task_rank, tf_config

    config = tf_config()
    if config is None:
        raise UserError("TF_CONFIG is not set; set it to this machine's task in the cluster "
                        "(docs/scaling.md)")
    if task_rank(config)[0] == 0:
        raise UserError("TF_CONFIG makes this machine the chief; run `dvc repro` here instead")
    kind = load_params(args.repo / "params.yaml").train.distribution
    if kind != "multi_worker":
        raise UserError(f"train.distribution is {kind} in {args.repo / 'params.yaml'}; set it "
                        "to multi_worker, as on the chief")
    _run_stage(args.repo, "train")


def _summary(shown: int, total: int, uri: str, args: argparse.Namespace) -> str:
    """`# 3 finished runs in <uri> (dataset mnist-5k), sorted by frechet_distance ascending`."""
    count = f"{shown} of {total}" if shown < total else str(shown)
    what = ("run" if total == 1 else "runs") if args.all else \
        ("finished run" if total == 1 else "finished runs")
    if getattr(args, "group_by", None):
        count = f"{shown} groups of {total}"
    where = f" (dataset {args.dataset})" if args.dataset else ""
    order = "descending" if args.desc else "ascending"
    return f"# {count} {what} in {uri}{where}, sorted by {args.sort} {order}"


def _no_runs(args: argparse.Namespace, uri: str, experiment: str) -> str:
    """The error for an empty result, naming the filters that emptied it."""
    what = "runs" if args.all else "finished runs"
    where = f" of dataset {args.dataset!r}" if args.dataset else ""
    hint = "" if args.all else " (--all includes running and failed ones)"
    return f"no {what}{where} in experiment {experiment!r} of {uri}{hint}"


