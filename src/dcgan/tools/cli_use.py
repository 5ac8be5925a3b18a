"""`dcgan sample` and `dcgan export`: use a trained generator outside the pipeline.

Both take MODEL as a `.keras` file, `models:/dcgan-generator/<version>`,
`models:/dcgan-generator@<alias>` or `runs:/<run id>/generator` (tools.generator_ref). Serving
is MLflow's own `mlflow models serve` (docs/serving.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dcgan.core.errors import UserError
from dcgan.tools.arguments import positive_int

MODEL_HELP = ("a .keras file, models:/dcgan-generator/<version>, models:/dcgan-generator@<alias> "
              "or runs:/<run id>/generator")


def add_use(commands: argparse._SubParsersAction) -> None:
    """Declare `dcgan sample` and `dcgan export`."""
    _add_sample(commands)
    _add_export(commands)


def _add_sample(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sample", help="draw a grid, latent walks or latent arithmetic from a generator",
        description="Draw pictures from a generator. By default a grid of --n samples from "
                    "noise of --seed; --numbered writes each cell's number on it, and "
                    "--interpolate and --arithmetic name cells of that grid (same --n and "
                    "--seed).")
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--n", type=positive_int, default=64, help="samples in the grid "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grid's noise z "
                        "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"),
                        help="the PNG to write (default: %(default)s)")
    parser.add_argument("--npy", type=Path, metavar="FILE",
                        help="also save the drawn images, (N, H, W, C) float32 in [-1, 1]")
    parser.add_argument("--z", type=Path, metavar="FILE",
                        help="take the grid's z vectors from this .npy, (N, latent_dim), "
                             "instead of --n and --seed")
    parser.add_argument("--numbered", action="store_true", help="number the grid's cells")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--interpolate", metavar="A,B", nargs="?", const="",
                      help="latent walks: from grid cell A to cell B, or without A,B 8 rows "
                           "between random points")
    mode.add_argument("--arithmetic", metavar="EXPR",
                      help='the paper\'s latent arithmetic on mean z of grid cells, e.g. '
                           '"3,17,22 - 5,9,40 + 11,12,60"')
    parser.add_argument("--steps", type=positive_int, default=10,
                        help="images per walk with --interpolate (default: %(default)s)")
    parser.set_defaults(handler=_sample)


def _sample(args: argparse.Namespace) -> None:
    """Write the picture (and --npy) and print what was drawn.

    Raises:
        UserError: for a model that cannot be found or loaded, a bad --z, or cells
            outside the grid.
    """
    import numpy as np

    from dcgan.core.outputs import atomic_path
    from dcgan.sampling.images import save_image
    from dcgan.tools import generator_ref, sample

    given = _read_z(args.z) if args.z else None
    terms = pair = None
    if args.arithmetic is not None:  # before the slow model load
        terms = sample.parse_arithmetic(args.arithmetic,
                                        args.n if given is None else len(given))
    generator = generator_ref.load(args.model).generator
    latent_dim = generator.input_shape[-1]
    z = sample.latents(args.n, latent_dim, args.seed) if given is None else \
        _check_width(given, args.z, latent_dim)
    if args.interpolate:
        pair = _pair(args.interpolate, len(z))
    if args.arithmetic is not None:
        images = sample.arithmetic(generator, z, terms, args.seed)
        image, what = sample.picture(images, 2), (
            f"latent arithmetic {sample.describe(terms)}: row 1 the terms' mean images, row 2 "
            f"the result and {sample.ARITHMETIC_VARIANTS - 1} neighbours (z + uniform noise "
            f"±{sample.ARITHMETIC_NOISE})")
    elif args.interpolate is not None:
        images = sample.walks(generator, z, pair, args.steps, args.seed)
        image = sample.picture(images, len(images) // args.steps)
        what = (f"a walk from cell {pair[0]} to cell {pair[1]}" if pair else
                f"{len(images) // args.steps} walks between random points") + \
            f", {args.steps} images each"
    else:
        images = sample.images_of(generator, z)
        image, what = sample.grid(images, args.numbered), (
            f"{len(images)} samples" + (", cells numbered row by row from 0" if args.numbered
                                        else ""))
    if args.npy:
        with atomic_path(args.npy) as tmp, open(tmp, "wb") as f:
            np.save(f, images)
    save_image(image, args.out)
    source_of = f"z from {args.z}" if args.z else f"seed {args.seed}"
    print(f"wrote {args.out}: {what} ({source_of}, images {images.shape[1:]})"
          + (f"; {args.npy}: {images.shape} float32 in [-1, 1]" if args.npy else ""))


def _read_z(path: Path):
    """The z vectors of a .npy file.

    Raises:
        UserError: if it is missing or not a 2-D array of numbers.
    """
    import numpy as np

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"--z {path}: cannot be read as a .npy array ({err}); save one with "
                        "numpy.save(path, z), z of shape (N, latent_dim)") from None
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.number) or len(z) == 0:
        raise UserError(f"--z {path}: holds an array of shape {z.shape} and dtype {z.dtype}; "
                        "expected numbers of shape (N, latent_dim)")
    return z.astype(np.float32)


def _check_width(z, path: Path, latent_dim: int):
    """`z`, if its vectors are the generator's width.

    Raises:
        UserError: if they are not.
    """
    if z.shape[1] != latent_dim:
        raise UserError(f"--z {path}: vectors of width {z.shape[1]}, but the generator takes "
                        f"z of width {latent_dim} (train.latent_dim); save z of shape "
                        f"(N, {latent_dim})")
    return z


def _pair(text: str, n: int) -> tuple[int, int]:
    """`A,B` as two cell numbers of a grid of `n`.

    Raises:
        UserError: if it is not two whole numbers of cells in the grid.
    """
    from dcgan.tools.sample import cell

    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise UserError(f"--interpolate {text!r}: expected two grid cells A,B, e.g. 3,17 "
                        "(cells of the --numbered grid)")
    return cell(int(parts[0]), n), cell(int(parts[1]), n)


def _add_export(commands: argparse._SubParsersAction) -> None:
    from dcgan.tools.export import FORMATS, TOLERANCE

    parser = commands.add_parser(
        "export", help="export a generator to SavedModel, TFLite or ONNX, checked for parity",
        description="Export a generator for other runtimes: a TensorFlow SavedModel folder, a "
                    "TFLite (LiteRT) file or an ONNX file. Each export is loaded back in its own "
                    "runtime and must give the images of the generator's float32 copy (what "
                    f"it is made from) on fixed z within {TOLERANCE:g}; its difference from "
                    "the trained generator as served (bfloat16 compute, when trained so) is "
                    "reported too. When the generator has an MLflow run, the export is "
                    "logged to it under exports/.")
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", type=Path, help="where to write it (default: "
                        "exports/generator_saved_model, exports/generator.tflite or "
                        "exports/generator.onnx)")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the export to the generator's MLflow run")
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    """Export, check parity, log to the run, and print one line.

    Raises:
        UserError: for an unknown format, a model that cannot be loaded, a failed
            conversion or a parity miss.
    """
    from dcgan.tools import export

    export.check_format(args.format)  # before TensorFlow loads
    from dcgan.tools import generator_ref

    out = args.out or export.default_path(args.format)
    loaded = generator_ref.load(args.model)
    parity = export.export(loaded.generator, args.format, out)
    logged = ""
    if loaded.run_id and not args.no_log:
        from dcgan.tracking.logged import log_export

        where = log_export(loaded.run_id, out, parity.metrics())
        logged = f"; logged to run {loaded.run_id[:8]} as {where}"
    elif not args.no_log:
        logged = "; not logged (no MLflow run has this generator)"
    print(f"wrote {out} ({args.format}): {parity.summary()}{logged}")
