"""Helpers shared by the thin entry points in stages/: argument parsing and error reporting.

Each stage script does `params, args = stage_args(__doc__, "raw", ...)`, calls
one package function, and runs under `stage_main(main)`. A stage script imports only this
module at the top and the package function inside `main()`: run as a program, the script
is a small watchdog parent (dcgan.runtime.watchdog) that runs `main()` in a child, and that parent
should not hold TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dcgan.core.errors import UserError
from dcgan.runtime import console, watchdog

if TYPE_CHECKING:
    from dcgan.core.config import Params


def stage_args(doc: str | None, *paths: str, bundle: type | None = None,
               argv: list[str] | None = None) -> tuple[Params, argparse.Namespace]:
    """Parse `--params` and one required `--<name> PATH` per name, then validate params.

    With `bundle`, a dataclass of paths (e.g. `TrainOutputs`), each of its fields is an
    option too (`run_file` is `--run-file`; a field with a default is optional), and
    `args.bundle` is the dataclass filled in: the dataclass is the one place that names them.
    The whole params file is validated, whichever sections the stage reads.

    Returns:
        The validated params and the parsed arguments (paths as `Path`).

    Raises:
        UserError: if params.yaml is invalid.
    """
    from dcgan.core.config import load_params  # pydantic: 0.3 s the watchdog parent need not pay

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--params", default="params.yaml",
                        help="params file (default: %(default)s)")
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    for f in dataclasses.fields(bundle) if bundle else ():
        optional = f.default is not dataclasses.MISSING
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=Path,
                            required=not optional, default=f.default if optional else None,
                            help=f.metadata.get("help"))
    args = parser.parse_args(argv)
    if bundle:
        args.bundle = bundle(**{f.name: getattr(args, f.name) for f in dataclasses.fields(bundle)})
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

    When `main` is the `main()` of the script Python runs as the program (a stage as
    dvc.yaml runs it), this process becomes the watchdog parent of a child that runs it
    (see dcgan.runtime.watchdog), so that a stage the out-of-memory killer ends also fails in one
    line. Otherwise (the child, the `dcgan` command, a test) `main()` runs here. Either way a
    stage's or the `dcgan` command's stderr reaches the user without TensorFlow's start-up
    noise (dcgan.runtime.console).

    Raises:
        SystemExit: 2 on a `UserError`, a `MemoryError` or a full disk, 130 on Ctrl-C, 0
            when stdout's reader has gone (a closed pipe); the watchdog's status.
    """
    if os.environ.pop(watchdog.CHILD_ENV, None):  # grandchild stages get their own watchdog
        watchdog.die_with_parent()
    elif _is_program(main):
        raise SystemExit(watchdog.run_watched())
    # The watchdog filters a stage's stderr; the `dcgan` command filters its own.
    with console.filtered_stderr() if _is_command() else contextlib.nullcontext():
        _run(main)


def _run(main: Callable[[], None]) -> None:
    """`main()`, its errors reported as `stage_main` says."""
    try:
        main()
    except UserError as err:
        _fail(str(err))
    except MemoryError:
        _fail(watchdog.out_of_memory_line())
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as err:
        if err.errno == errno.ENOSPC:  # wherever it happens: one line, not a traceback
            where = f" writing {err.filename}" if err.filename else ""
            _fail(f"no space left on device{where}; free space there and rerun")
        if isinstance(err, BrokenPipeError):  # `dcgan compare | head`: the reader left
            # Python flushes stdout again at exit and would report that pipe too.
            with contextlib.suppress(OSError, ValueError):  # stdout may have no fd
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
        raise
    except Exception as err:
        if line := watchdog.device_oom_line(err):  # a GPU's memory: TensorFlow's own error
            _fail(line)
        raise


def _fail(line: str, code: int = 2) -> NoReturn:
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(code) from None


def _is_command() -> bool:
    """Whether this process is the `dcgan` command: its console script or `python -m dcgan`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return Path(sys.argv[0]).name == "dcgan" or getattr(spec, "name", "") == "dcgan.__main__"


def _is_program(main: Callable[[], None]) -> bool:
    """Whether `main` belongs to the script Python runs as the program (`python x.py`):
    not under pytest, `python -m` or the `dcgan` command, whose `main` is elsewhere."""
    program = getattr(sys.modules.get("__main__"), "__file__", None)
    return (getattr(main, "__module__", None) == "__main__" and program is not None
            and bool(sys.argv[0]) and Path(program).resolve() == Path(sys.argv[0]).resolve())
