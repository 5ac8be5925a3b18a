"""Recreate a run's model from what its MLflow run recorded: the logic behind `dcgan rebuild`.

Every training run records the git commit it ran at (`git_commit` tag), every param that
shapes the model (fetch, preprocess and train, with nulls resolved as logged), the data's
md5 (`data_md5`) and the md5 of the generator it wrote (`generator_md5`). `commands()`
turns that into shell commands: clone the repo, check out the commit, run the pipeline as
a DVC experiment with those params, and compare the new generator's md5 with the run's.
Same params and seed on the same machine give the same bytes, so the md5s match.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dcgan.core.errors import UserError


def commands(run_id: str, name: str, params: dict[str, str], tags: dict[str, str],
             repo: Path) -> list[str]:
    """The commands that rebuild run `run_id`'s generator, with comments.

    Args:
        run_id, name: the run's id and name, for the comments.
        params: its logged params (`train.lr` -> `"0.0002"`).
        tags: its tags; `git_commit` is required, `data_md5` and `generator_md5` are checked.
        repo: the repository to clone.

    Raises:
        UserError: if the run has no `git_commit` tag (it was not made by the pipeline).
    """
    if not tags.get("git_commit") or not params:
        raise UserError(f"run {run_id} ({name}) has no git_commit tag or no params: it was "
                        "not logged by the train stage, so it cannot be rebuilt")
    commit, short = tags["git_commit"], run_id[:8]
    target = f"../dcgan-rebuild-{short}"
    flags = "".join(f" \\\n    -S {_set_param(key, value)}"
                    for key, value in sorted(params.items()))
    lines = [
        f"# rebuild run {short} ({name}): commit {commit[:7]}, "
        f"data md5 {tags.get('data_md5', '?')}",
        f"git clone -q {shlex.quote(str(repo))} {target} && cd {target}",
        f"git checkout -q {commit}",
        f"source {shlex.quote(sys.prefix)}/bin/activate   # the same pinned packages",
        f"dvc exp run -n rebuild-{short}{flags}",
    ]
    if tags.get("data_md5"):
        lines.append("grep -A1 'path: data/processed/dataset$' dvc.lock   "
                     f"# expect md5: {tags['data_md5']}")
    if tags.get("generator_md5"):
        lines.append(f"md5sum models/generator.keras       # expect {tags['generator_md5']}")
    return lines


def _set_param(key: str, value: str) -> str:
    """`key=value` as one shell word for `dvc exp run -S`, which parses the value by Hydra's
    override grammar: a string with a comma, a sweep there, is quoted
    (`train.augment='translation,cutout'`), and so is an empty one, to be seen; a logged
    bool (`True`) is written as YAML's (`true`)."""
    if value in ("True", "False"):
        value = value.lower()
    elif value == "" or "," in value:
        value = "'" + value.replace("'", "\\'") + "'"
    word = f"{key}={value}"
    if shlex.quote(word) != word and not set(word) & set('"$`\\!') and " " not in word:
        return f'"{word}"'  # only the value's quotes need protecting from the shell
    return shlex.quote(word)
