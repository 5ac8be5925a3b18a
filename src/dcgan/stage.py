"""Helpers shared by the thin entry points in stages/: argument parsing and error reporting.

Each stage script does `params, args = stage_args(__doc__, "raw", ...)`, calls
one package function, and runs under `stage_main(main)`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dcgan.config import Params, load_params
from dcgan.errors import UserError


def stage_args(doc: str | None, *paths: str) -> tuple[Params, argparse.Namespace]:
    """Parse `--params` and one required `--<name> PATH` per name, then validate params.

    The whole params file is validated, whichever sections the stage reads.

    Returns:
        The validated params and the parsed arguments (paths as `Path`).

    Raises:
        UserError: if params.yaml is invalid.
    """
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: %(default)s)")
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    args = parser.parse_args()
    return load_params(args.params), args


def stage_command(root: Path, name: str) -> str:
    """The shell command of stage `name` in `root`/dvc.yaml, its `${vars}` filled in by DVC.

    Raises:
        UserError: if `root` holds no DVC pipeline with that stage.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            cmds = {getattr(s, "name", None): s.cmd for s in repo.index.stages}
    except DvcException as err:
        raise UserError(f"{root}: cannot read the DVC pipeline ({err}); run this in a clone "
                        "of the project") from None
    if name not in cmds:
        raise UserError(f"{root}/dvc.yaml has no stage {name!r}; run this in a clone of the "
                        "project")
    return cmds[name]


def stage_main(main: Callable[[], None]) -> None:
    """Run a stage's `main()`, reporting a `UserError` as one line and exit status 2.

    Raises:
        SystemExit: 2 on a `UserError` or a full disk, 130 on Ctrl-C, 0 when stdout's reader
            has gone (a closed pipe).
    """
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as err:
        if err.errno == errno.ENOSPC:  # wherever it happens: one line, not a traceback
            where = f" writing {err.filename}" if err.filename else ""
            print(f"error: no space left on device{where}; free space there and rerun",
                  file=sys.stderr)
            raise SystemExit(2) from None
        if isinstance(err, BrokenPipeError):  # `dcgan compare | head`: the reader left
            # Python flushes stdout again at exit and would report that pipe too.
            with contextlib.suppress(OSError, ValueError):  # stdout may have no fd
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        raise
