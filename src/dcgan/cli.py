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

from dcgan import compare
from dcgan.errors import UserError
from dcgan.stage import stage_main


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the command line) and run the chosen command.

    Raises:
        SystemExit: 2 on bad arguments or a UserError, 130 on Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    stage_main(lambda: args.handler(args))


def build_parser() -> argparse.ArgumentParser:
    """The `dcgan` parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="dcgan", description="Tools for the DCGAN pipeline's results.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_compare(commands)
    _add_rebuild(commands)
    _add_bench(commands)
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
    parser.add_argument("--params", metavar="A,B", type=_names,
                        help="param keys to show, e.g. train.lr,train.epochs (default: those "
                             f"that differ among the runs shown, else {fallback})")
    parser.add_argument("--metrics", metavar="A,B", type=_names,
                        help=f"metrics to show (default: those of {defaults} that the runs have)")
    parser.add_argument("--all", action="store_true",
                        help="include unfinished (RUNNING, FAILED, KILLED) runs, with their status")
    parser.add_argument("--limit", metavar="N", type=_positive_int,
                        help="show only the first N runs after sorting")
    parser.add_argument("--csv", action="store_true",
                        help="print CSV (full precision) instead of an aligned table; the summary "
                             "line goes to stderr")
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> None:
    """Print a summary line and the comparison table of the store's runs.

    Raises:
        UserError: if the store or experiment is missing, no run matches, or a name is unknown.
    """
    from dcgan import tracking  # mlflow takes seconds to import; --help should not wait

    runs = tracking.search_runs(dataset=args.dataset, finished_only=not args.all)
    if runs.empty:
        raise UserError(_no_runs(args, tracking.tracking_uri(), tracking.experiment_name()))
    df = compare.table(runs, params=args.params, metrics=args.metrics, sort=args.sort,
                       descending=args.desc, show_status=args.all, limit=args.limit)
    summary = _summary(len(df), len(runs), tracking.tracking_uri(), args)
    # With --csv, stdout stays pure CSV so it can be piped or redirected to a file.
    print(summary, file=sys.stderr if args.csv else sys.stdout)
    print(compare.format_table(df, csv=args.csv))


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
    from dcgan import rebuild, tracking

    run = tracking.find_run(args.run_id)
    print("\n".join(rebuild.commands(run.info.run_id, run.info.run_name, run.data.params,
                                     run.data.tags, tracking.repo_root())))


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
    from dcgan.cluster import task_rank, tf_config
    from dcgan.config import load_params
    from dcgan.stage import stage_command

    config = tf_config()
    if config is None:
        raise UserError("TF_CONFIG is not set; set it to this machine's task in the cluster "
                        "(README: Scaling out)")
    if task_rank(config)[0] == 0:
        raise UserError("TF_CONFIG makes this machine the chief; run `dvc repro` here instead")
    kind = load_params(args.repo / "params.yaml").train.distribution
    if kind != "multi_worker":
        raise UserError(f"train.distribution is {kind} in {args.repo / 'params.yaml'}; set it "
                        "to multi_worker, as on the chief")
    code = subprocess.run(stage_command(args.repo, "train"), shell=True, cwd=args.repo).returncode
    if code:
        raise SystemExit(code)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan bench train | quality | generate | evaluate | repro | memory | data`."""
    parser = commands.add_parser(
        "bench", help="benchmarks: throughput and time to quality against the TF tutorial",
        description="Benchmarks, not tests: each prints one JSON line and appends it, with the "
                    "machine and versions, to the results file.")
    kinds = parser.add_subparsers(title="benchmarks", metavar="WHAT", required=True)
    train = kinds.add_parser(
        "train", help="train-step throughput, ours against the tutorial's",
        description="Measure train-step throughput (images/s after warm-up) of this package's "
                    "DCGAN and of the TensorFlow tutorial's train step (its architecture, "
                    "float32, Adam 1e-4), alternating fresh processes.")
    train.add_argument("--arch", choices=["tutorial", "paper"], default="tutorial",
                       help="our architecture (default: %(default)s, the baseline's own)")
    train.add_argument("--batch-size", type=_positive_int, default=256, metavar="N",
                       help="images per step, both contenders (default: %(default)s)")
    train.add_argument("--precision", choices=["float32", "mixed_bfloat16"],
                       default="float32", help="our dtype policy (default: %(default)s)")
    train.add_argument("--update", choices=["alternating", "simultaneous"],
                       default="alternating", help="our update (train.update; default: "
                                                   "%(default)s)")
    train.add_argument("--steps-per-execution", type=_positive_int, default=1, metavar="N",
                       help="our train.steps_per_execution (default: %(default)s)")
    train.add_argument("--steps", type=_positive_int, default=30, metavar="N",
                       help="timed steps per process (default: %(default)s)")
    train.add_argument("--warmup", type=_positive_int, default=5, metavar="N",
                       help="untimed steps first: tracing, allocation (default: %(default)s)")
    train.add_argument("--repeats", type=_positive_int, default=2, metavar="N",
                       help="processes per contender (default: %(default)s)")
    train.set_defaults(handler=_bench_train)
    quality = kinds.add_parser(
        "quality", help="time to quality, our default recipe against the tutorial's",
        description="Train the tutorial's recipe and ours (params.yaml's train section) on "
                    "the pipeline's processed data, scoring the Fréchet distance (the evaluate "
                    "stage's classifier) after every epoch, until each reaches the threshold: by "
                    "default the tutorial's own distance after --threshold-epoch epochs. Run "
                    "after `dvc repro classifier`.")
    quality.add_argument("--threshold", type=float, metavar="FD",
                         help="Fréchet distance to reach (default: the tutorial's at "
                              "--threshold-epoch)")
    quality.add_argument("--threshold-epoch", type=_positive_int, default=20, metavar="N",
                         help="the tutorial epoch whose distance is the threshold "
                              "(default: %(default)s)")
    quality.add_argument("--max-epochs", type=_positive_int, default=60, metavar="N",
                         help="give up after this many epochs (default: %(default)s)")
    quality.add_argument("--data", default="data/processed/dataset", metavar="PATH",
                         help="processed data (default: %(default)s)")
    quality.add_argument("--classifier", default="models/classifier.keras", metavar="PATH",
                         help="the evaluate stage's classifier (default: %(default)s)")
    quality.set_defaults(handler=_bench_quality)
    for kind in (train, quality, *_add_stage_benches(kinds)):
        kind.add_argument("--results", default="benchmarks/results.jsonl", metavar="PATH",
                          help="file the record is appended to (default: %(default)s)")


def _add_stage_benches(kinds: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Declare `dcgan bench generate | evaluate | repro | memory` (dcgan.bench_stages) and
    `dcgan bench data` (dcgan.bench_data)."""
    generate = kinds.add_parser(
        "generate", help="samples/s of the generate stage's sampling",
        description="Time the generate stage's own sampling (sampling.draw_samples) of N "
                    "samples after one warm-up call; no files are written.")
    generate.add_argument("--samples", type=_positive_int, default=10_000, metavar="N",
                          help="samples to draw (default: %(default)s)")
    evaluate = kinds.add_parser(
        "evaluate", help="seconds of the evaluate stage's scoring",
        description="Time the evaluate stage's scoring (every metric row, the classifier's "
                    "accuracy) of N generated samples, against the processed data or against "
                    "full-MNIST-sized real sets (50,000 train and 10,000 test images tiled "
                    "from it).")
    evaluate.add_argument("--real", choices=["default", "full_mnist_size"], default="default",
                          help="real images to score against (default: %(default)s)")
    evaluate.add_argument("--samples", type=_positive_int, default=10_000, metavar="N",
                          help="generated samples (default: %(default)s)")
    repro = kinds.add_parser(
        "repro", help="seconds of a `dvc repro` with nothing to do",
        description="The median of --runs `dvc repro` calls in a repo where `dvc status` "
                    "shows nothing to do (it refuses otherwise).")
    repro.add_argument("--runs", type=_positive_int, default=3, metavar="N",
                       help="calls to time (default: %(default)s)")
    memory = kinds.add_parser(
        "memory", help="peak RSS of every stage, each in its own process",
        description="Run each dvc.yaml stage command in a temporary copy of the repo, with "
                    "few epochs, and read each one's peak RSS (os.wait4).")
    memory.add_argument("--dataset", choices=["default", "60k"], default="default",
                        help="params.yaml's dataset, or 60,000 synthetic 28x28 images "
                             "(default: %(default)s)")
    memory.add_argument("--epochs", type=_positive_int, default=1, metavar="N",
                        help="train.epochs in the copy (default: %(default)s; the peak comes "
                             "in the first)")
    data = kinds.add_parser(
        "data", help="memory, disk and speed of the pipeline on a synthetic image folder",
        description="Draw a folder of JPEGs in class folders and run the pipeline on it in a "
                    "temporary DVC repo: every stage's peak RSS (train for --train-steps "
                    "steps), the disk taken, preprocess on one core and on all, train "
                    "throughput from disk and from memory; again for --second images. "
                    "83 minutes with --train-steps 10 on a 2-core AVX2 CPU in float32 (a 64 "
                    "px step there takes 6.5-8 s; the classifier trains an epoch on the "
                    "labelled images), progress on stderr.")
    for flag, default, what in (("--images", 200_000, "images in the folder"),
                                ("--size", 64, "preprocess.image_size in pixels"),
                                ("--classes", 10, "class folders (labels)"),
                                ("--train-steps", 200, "train steps, measured and timed (28 px "
                                 "throughput runs take (size/28)^2 times as many)"),
                                ("--repeats", 2, "fresh processes per timed variant")):
        data.add_argument(flag, type=_positive_int, default=default, metavar="N",
                          help=f"{what} (default: %(default)s)")
    data.add_argument("--second", type=int, default=50_000, metavar="N",
                      help="images of the second memory point; 0 skips it (default: "
                           "%(default)s)")
    for kind, handler in ((generate, _bench_generate), (evaluate, _bench_evaluate),
                          (repro, _bench_repro), (memory, _bench_memory), (data, _bench_data)):
        kind.set_defaults(handler=handler)
    return [generate, evaluate, repro, memory, data]


def _bench_generate(args: argparse.Namespace) -> None:
    from dcgan import bench_stages

    _record(bench_stages.generate_rate(num_samples=args.samples), args.results)


def _bench_evaluate(args: argparse.Namespace) -> None:
    from dcgan import bench_stages

    _record(bench_stages.evaluate_seconds(args.real, args.samples), args.results)


def _bench_repro(args: argparse.Namespace) -> None:
    from dcgan import bench_stages

    _record(bench_stages.noop_repro_seconds(runs=args.runs), args.results)


def _bench_memory(args: argparse.Namespace) -> None:
    from dcgan import bench_stages

    _record(bench_stages.stage_memory(args.dataset, train_epochs=args.epochs), args.results)


def _bench_data(args: argparse.Namespace) -> None:
    from dcgan import bench_data

    _record(bench_data.run(args.images, args.size, args.classes, args.second, args.train_steps,
                           args.repeats), args.results)


def _bench_train(args: argparse.Namespace) -> None:
    """Run the throughput benchmark; print and record it."""
    from dcgan import bench

    _record(bench.run_benchmark(args.arch, args.batch_size, args.precision, args.steps,
                                args.warmup, args.repeats, update=args.update,
                                steps_per_execution=args.steps_per_execution), args.results)


def _bench_quality(args: argparse.Namespace) -> None:
    """Run the time-to-quality benchmark; print and record it."""
    from dcgan import bench_quality

    _record(bench_quality.run(args.data, args.classifier, args.threshold, args.threshold_epoch,
                              args.max_epochs), args.results)


def _record(record: dict, results: str) -> None:
    """Append a benchmark's record to the results file and print it as one JSON line."""
    import json

    from dcgan.bench import append_result

    append_result(record, Path(results))
    print(json.dumps(record))


def _summary(shown: int, total: int, uri: str, args: argparse.Namespace) -> str:
    """`# 3 finished runs in <uri> (dataset mnist-5k), sorted by frechet_distance ascending`."""
    count = f"{shown} of {total}" if shown < total else str(shown)
    what = ("run" if total == 1 else "runs") if args.all else \
        ("finished run" if total == 1 else "finished runs")
    where = f" (dataset {args.dataset})" if args.dataset else ""
    order = "descending" if args.desc else "ascending"
    return f"# {count} {what} in {uri}{where}, sorted by {args.sort} {order}"


def _no_runs(args: argparse.Namespace, uri: str, experiment: str) -> str:
    """The error for an empty result, naming the filters that emptied it."""
    what = "runs" if args.all else "finished runs"
    where = f" of dataset {args.dataset!r}" if args.dataset else ""
    hint = "" if args.all else " (--all includes running and failed ones)"
    return f"no {what}{where} in experiment {experiment!r} of {uri}{hint}"


def _names(text: str) -> list[str]:
    """`a, b,c` as `['a', 'b', 'c']`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def _positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value
