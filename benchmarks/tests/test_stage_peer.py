"""Tests of benchmarks.stage_peer (`python -m benchmarks stage`): its mistakes are one line.
The benchmark itself needs PyTorch and minutes; its record is checked by the docs tests."""

from __future__ import annotations

import pytest

from benchmarks import stage_peer
from benchmarks.cli import main
from dcgan.core.errors import UserError


@pytest.mark.parametrize("epochs", [(6, 1), (1, 4)])  # backwards; not a multiple of eval_every
def test_epochs_must_differ_by_whole_fd_intervals(epochs: tuple[int, int]) -> None:
    with pytest.raises(UserError, match="multiple of train.eval_every"):
        stage_peer.run("float32", 20, *epochs)


@pytest.mark.usefixtures("no_torch")
def test_stage_without_pytorch_is_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stage", "--results", "/dev/null"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: PyTorch is not installed")
