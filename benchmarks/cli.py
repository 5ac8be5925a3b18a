"""The benchmark commands: `python -m benchmarks train | stage | quality | generate | evaluate |
repro | memory | data`, run from the repository root. `python -m benchmarks --help` lists them.

Benchmarks, not tests: each prints one JSON line and appends it, with the machine and the
versions, to benchmarks/results.jsonl, the record the docs' figures are rendered from.
They import the `dcgan` package; the package never imports them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dcgan.core.errors import UserError
from dcgan.nets.architectures import ARCHITECTURES
from dcgan.nets.updates import UPDATES
from dcgan.tools.arguments import positive_int, run_command


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark `argv` names (default: the command line); see `run_command`."""
    run_command(build_parser(), argv)


def build_parser() -> argparse.ArgumentParser:
    """The benchmarks' parser, one subparser per benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks, not tests: each prints one JSON line and appends it, with the "
                    "machine and versions, to the results file.")
    kinds = parser.add_subparsers(title="benchmarks", metavar="WHAT", required=True)
    train, stage, quality = _add_train(kinds), _add_stage(kinds), _add_quality(kinds)
    for kind in (train, stage, quality, *_add_stage_benches(kinds)):
        kind.add_argument("--results", default="benchmarks/results.jsonl", metavar="PATH",
                          help="file the record is appended to (default: %(default)s)")
    return parser


def _add_train(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare `python -m benchmarks train`."""
    train = kinds.add_parser(
        "train", help="train-step throughput, ours against the tutorial's",
        description="Measure train-step throughput (images/s after warm-up) of this package's "
                    "DCGAN and of the TensorFlow tutorial's train step (its architecture, "
                    "float32, Adam 1e-4), alternating fresh processes.")
    train.add_argument("--arch", choices=list(ARCHITECTURES), default="tutorial",
                       help="our architecture (default: %(default)s, the baseline's own)")
    train.add_argument("--batch-size", type=positive_int, metavar="N",
                       help="images per step, both contenders (default: 256 against the "
                            "tutorial, 128 against pytorch)")
    train.add_argument("--precision", choices=["float32", "mixed_bfloat16"],
                       default="float32", help="our dtype policy (default: %(default)s)")
    train.add_argument("--peer", choices=["tutorial", "pytorch"], default="tutorial",
                       help="the contender: the TF tutorial's step, or PyTorch's DCGAN "
                            "(pytorch/examples dcgan/main.py; paper arch at 64x64x3; needs "
                            "requirements-bench.txt) (default: %(default)s)")
    train.add_argument("--components", action="store_true",
                       help="with --peer pytorch: also time the parts of our step (G and D "
                            "forward, backward, Adam) and profile it per oneDNN kernel, in "
                            "float32 and bfloat16")
    train.add_argument("--image-size", type=positive_int, metavar="PX",
                       help="image side (default: 28 against the tutorial, 64 against pytorch)")
    train.add_argument("--update", choices=list(UPDATES),
                       default="alternating", help="our update (train.update; default: "
                                                   "%(default)s)")
    train.add_argument("--steps-per-execution", type=positive_int, default=1, metavar="N",
                       help="our train.steps_per_execution (default: %(default)s)")
    train.add_argument("--steps", type=positive_int, default=30, metavar="N",
                       help="timed steps per process (default: %(default)s)")
    train.add_argument("--warmup", type=positive_int, default=5, metavar="N",
                       help="untimed steps first: tracing, allocation (default: %(default)s)")
    train.add_argument("--repeats", type=positive_int, default=2, metavar="N",
                       help="processes per contender (default: %(default)s)")
    train.set_defaults(handler=_bench_train)
    return train


def _add_stage(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare `python -m benchmarks stage`."""
    stage = kinds.add_parser(
        "stage", help="the train stage itself (dvc repro on a 64 px folder) against PyTorch",
        description="Time `dvc repro train` on a folder of 64 px RGB JPEGs at two epoch "
                    "counts, and PyTorch's DCGAN step before and after; compare the stage's "
                    "ratio with the step-alone one (`train --peer pytorch`). Needs "
                    "requirements-bench.txt.")
    stage.add_argument("--precision", choices=("float32", "mixed_bfloat16"),
                       default="mixed_bfloat16", help="train.precision (default: %(default)s)")
    stage.add_argument("--images", type=positive_int, default=3000, metavar="N",
                       help="images in the folder (default: %(default)s)")
    stage.add_argument("--epochs", type=positive_int, nargs=2, default=(1, 6),
                       metavar=("SHORT", "LONG"), help="the two train.epochs; LONG - SHORT a "
                       "multiple of train.eval_every (default: 1 6)")
    stage.set_defaults(handler=_bench_stage)
    return stage


def _bench_stage(args: argparse.Namespace) -> None:
    """Run the train-stage benchmark; print and record it."""
    from benchmarks import stage_peer

    _record(stage_peer.run(args.precision, args.images, *args.epochs, Path(args.results)),
            args.results)


def _add_quality(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare `python -m benchmarks quality`."""
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
    quality.add_argument("--threshold-epoch", type=positive_int, default=20, metavar="N",
                         help="the tutorial epoch whose distance is the threshold "
                              "(default: %(default)s)")
    quality.add_argument("--max-epochs", type=positive_int, default=60, metavar="N",
                         help="give up after this many epochs (default: %(default)s)")
    quality.add_argument("--data", default="data/processed/dataset", metavar="PATH",
                         help="processed data (default: %(default)s)")
    quality.add_argument("--classifier", default="models/classifier.keras", metavar="PATH",
                         help="the evaluate stage's classifier (default: %(default)s)")
    quality.set_defaults(handler=_bench_quality)
    return quality


def _add_stage_benches(kinds: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Declare `python -m benchmarks generate | evaluate | repro | memory` (benchmarks.stages) and
    `python -m benchmarks data` (benchmarks.data)."""
    generate = kinds.add_parser(
        "generate", help="samples/s of the generate stage's sampling",
        description="Time the generate stage's own sampling (sampling.generate.draw_samples) of N "
                    "samples after one warm-up call; no files are written.")
    generate.add_argument("--samples", type=positive_int, default=10_000, metavar="N",
                          help="samples to draw (default: %(default)s)")
    evaluate = kinds.add_parser(
        "evaluate", help="seconds of the evaluate stage's scoring",
        description="Time the evaluate stage's scoring (every metric row, the classifier's "
                    "accuracy) of N generated samples, against the processed data or against "
                    "full-MNIST-sized real sets (50,000 train and 10,000 test images tiled "
                    "from it).")
    evaluate.add_argument("--real", choices=["default", "full_mnist_size"], default="default",
                          help="real images to score against (default: %(default)s)")
    evaluate.add_argument("--samples", type=positive_int, default=10_000, metavar="N",
                          help="generated samples (default: %(default)s)")
    repro = kinds.add_parser(
        "repro", help="seconds of a `dvc repro` with nothing to do",
        description="The median of --runs `dvc repro` calls in a repo where `dvc status` "
                    "shows nothing to do (it refuses otherwise).")
    repro.add_argument("--runs", type=positive_int, default=3, metavar="N",
                       help="calls to time (default: %(default)s)")
    memory = kinds.add_parser(
        "memory", help="peak RSS of every stage, each in its own process",
        description="Run each dvc.yaml stage command in a temporary copy of the repo, with "
                    "few epochs, and read each one's peak RSS (os.wait4).")
    memory.add_argument("--dataset", choices=["default", "60k"], default="default",
                        help="params.yaml's dataset, or 60,000 synthetic 28x28 images "
                             "(default: %(default)s)")
    memory.add_argument("--epochs", type=positive_int, default=1, metavar="N",
                        help="train.epochs in the copy (default: %(default)s; the peak comes "
                             "in the first)")
    data = _add_data(kinds)
    for kind, handler in ((generate, _bench_generate), (evaluate, _bench_evaluate),
                          (repro, _bench_repro), (memory, _bench_memory), (data, _bench_data)):
        kind.set_defaults(handler=handler)
    return [generate, evaluate, repro, memory, data]


def _add_data(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare `python -m benchmarks data`."""
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
        data.add_argument(flag, type=positive_int, default=default, metavar="N",
                          help=f"{what} (default: %(default)s)")
    data.add_argument("--second", type=int, default=50_000, metavar="N",
                      help="images of the second memory point; 0 skips it (default: "
                           "%(default)s)")
    return data


def _bench_generate(args: argparse.Namespace) -> None:
    from benchmarks import stages

    _record(stages.generate_rate(num_samples=args.samples), args.results)


def _bench_evaluate(args: argparse.Namespace) -> None:
    from benchmarks import stages

    _record(stages.evaluate_seconds(args.real, args.samples), args.results)


def _bench_repro(args: argparse.Namespace) -> None:
    from benchmarks import stages

    _record(stages.noop_repro_seconds(runs=args.runs), args.results)


def _bench_memory(args: argparse.Namespace) -> None:
    from benchmarks import stages

    _record(stages.stage_memory(args.dataset, train_epochs=args.epochs), args.results)


def _bench_data(args: argparse.Namespace) -> None:
    from benchmarks import data

    _record(data.run(args.images, args.size, args.classes, args.second, args.train_steps,
                           args.repeats), args.results)


def _bench_train(args: argparse.Namespace) -> None:
    """Run the throughput benchmark; print and record it."""
    from benchmarks import step

    if args.peer == "pytorch":
        from benchmarks import peer

        _record(peer.run(args.precision, args.update, args.batch_size or 128,
                               args.image_size or 64, args.steps, args.warmup, args.repeats,
                               args.steps_per_execution, args.components), args.results)
        return
    if args.image_size:
        raise UserError("--image-size is for --peer pytorch; against the tutorial the images "
                        "are 28 px")
    _record(step.run_benchmark(args.arch, args.batch_size or 256, args.precision, args.steps,
                                args.warmup, args.repeats, update=args.update,
                                steps_per_execution=args.steps_per_execution), args.results)


def _bench_quality(args: argparse.Namespace) -> None:
    """Run the time-to-quality benchmark; print and record it."""
    from benchmarks import quality

    _record(quality.run(args.data, args.classifier, args.threshold, args.threshold_epoch,
                              args.max_epochs), args.results)


def _record(record: dict, results: str) -> None:
    """Append a benchmark's record to the results file and print it as one JSON line."""
    import json

    from benchmarks.records import append_result

    append_result(record, Path(results))
    print(json.dumps(record))
