"""Tests of `dcgan rebuild`: the commands that recreate a run's model from its MLflow record.

Run with `pytest tests/test_rebuild.py -q`. The commands' effect (same commit, same params:
the same generator bytes) is checked end to end by test_resume.py, whose fresh clone
reproduces the pipeline fixture's dvc.lock md5 for md5.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from test_training import use_scratch_store

from dcgan.core.errors import UserError
from dcgan.tools import rebuild
from dcgan.tools.cli import main
from dcgan.tracking.runlog import RunLog

PARAMS = {"train.lr": "0.0005", "train.beta1": "0.5", "fetch.folder": "null",
          "fetch.dataset": "mnist-5k"}
TAGS = {"git_commit": "a" * 40, "data_md5": "d" * 32, "generator_md5": "9" * 32}


def test_commands_check_out_the_commit_and_set_every_param() -> None:
    lines = rebuild.commands("4c651fc4" + "0" * 24, "lr-5e-4", PARAMS, TAGS, Path("/src/repo"))
    text = "\n".join(lines)
    assert lines[0] == f"# rebuild run 4c651fc4 (lr-5e-4): commit aaaaaaa, data md5 {'d' * 32}"
    assert ("git clone -q /src/repo ../dcgan-rebuild-4c651fc4 && "
            "cd ../dcgan-rebuild-4c651fc4") in text
    assert f"git checkout -q {'a' * 40}" in text
    assert f"source {sys.prefix}/bin/activate" in text
    # the experiment command, as the shell would split it
    exp = shlex.split(text.split("dvc exp run", 1)[1].split("\ngrep ")[0].replace("\\\n", " "))
    assert exp[:2] == ["-n", "rebuild-4c651fc4"]
    assert exp[2:] == [x for k in sorted(PARAMS) for x in ("-S", f"{k}={PARAMS[k]}")]
    assert f"md5sum models/generator.keras       # expect {'9' * 32}" in text
    assert f"dvc.lock   # expect md5: {'d' * 32}" in text


def test_commands_quote_what_the_shell_would_split() -> None:
    lines = rebuild.commands("f" * 32, "x", {"fetch.folder": "/my images/a"}, TAGS,
                             Path("/a b/repo"))
    text = "\n".join(lines)
    assert "git clone -q '/a b/repo' " in text
    assert "-S 'fetch.folder=/my images/a'" in text


def test_commands_keep_each_value_one_param_for_dvc() -> None:
    """A comma is DVC's sweep syntax: such a value is quoted for Hydra's grammar, as an
    empty one is; logged bools are written as YAML's."""
    params = {"train.augment": "translation,cutout", "train.keep_best": "True",
              "preprocess.skip_unreadable": "False", "fetch.mirror": ""}
    text = "\n".join(rebuild.commands("f" * 32, "x", params, TAGS, Path(".")))
    exp = shlex.split(text.split("dvc exp run", 1)[1].split("\ngrep ")[0].replace("\\\n", " "))
    assert exp[2:] == ["-S", "fetch.mirror=''", "-S", "preprocess.skip_unreadable=false",
                       "-S", "train.augment='translation,cutout'", "-S", "train.keep_best=true"]
    assert "-S \"train.augment='translation,cutout'\"" in text


def test_a_run_without_a_commit_cannot_be_rebuilt() -> None:
    with pytest.raises(UserError, match="run ffff.* has no git_commit tag"):
        rebuild.commands("f" * 32, "x", PARAMS, {}, Path("."))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_scratch_store(monkeypatch, tmp_path)


def test_cli_prints_the_commands_of_a_logged_run(store: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    tags = {"git_commit": "b" * 40, "data_md5": "c" * 32}
    with RunLog.open({"train.lr": 0.0002, "train.beta1": None}, tags, "paper-x") as log:
        log.tags({"generator_md5": "e" * 32})
    main(["rebuild", log.run_id[:8]])
    out = capsys.readouterr().out
    assert f"git checkout -q {'b' * 40}" in out
    assert "-S train.beta1=null" in out and "-S train.lr=0.0002" in out
    assert f"# expect {'e' * 32}" in out


@pytest.mark.parametrize("prefix, message", [
    ("zz", "'zz' is not a run id: give its first 4 or more hex digits"),
    ("0" * 32, "no run of experiment 'dcgan' in sqlite:///"),
])
def test_cli_errors_are_one_line(store: str, prefix: str, message: str,
                                 capsys: pytest.CaptureFixture) -> None:
    with RunLog.open({}, {}):
        pass
    capsys.readouterr()  # MLflow's store set-up notes
    with pytest.raises(SystemExit) as exit_info:
        main(["rebuild", prefix])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")
