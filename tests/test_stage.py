"""Unit tests of dcgan.stage.stage_main: how any stage (and the `dcgan` command) ends on
an error. Run with `pytest tests/test_stage.py -q`.
"""

from __future__ import annotations

import errno

import pytest

from dcgan.errors import UserError
from dcgan.stage import stage_main


def _raising(err: BaseException):
    def main() -> None:
        raise err
    return main


@pytest.mark.parametrize("err, code, line", [
    (UserError("params.yaml: bad"), 2, "error: params.yaml: bad"),
    (OSError(errno.ENOSPC, "No space left on device", "data/x.npy"), 2,
     "error: no space left on device writing data/x.npy; free space there and rerun"),
    (OSError(errno.ENOSPC, "No space left on device"), 2,
     "error: no space left on device; free space there and rerun"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
])
def test_errors_end_in_one_line(err: BaseException, code: int, line: str,
                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        stage_main(_raising(err))
    assert exit_info.value.code == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_closed_pipe_ends_quietly(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # `dcgan compare | head`
        stage_main(_raising(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert exit_info.value.code == 0
    assert capsys.readouterr().err == ""


def test_other_os_errors_are_not_hidden() -> None:
    with pytest.raises(PermissionError):  # a bug, not bad input: the traceback is wanted
        stage_main(_raising(PermissionError(errno.EACCES, "Permission denied")))
