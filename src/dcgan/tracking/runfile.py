"""The run file: what the train stage hands to MLflow, as a DVC output.

It holds the md5 of the generator that training wrote, the params that shaped it and
the run's tags (dataset, data md5, architecture, precision). It is all the sync step
(tracking.sync) needs, beside the other outputs, to find the generator's MLflow run or to
make it afresh, so nothing lives only in mlflow.db. A hash, not a run id: identical
runs write identical files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcgan.core.errors import UserError
from dcgan.core.outputs import write_json


@dataclass(frozen=True)
class RunRecord:
    """The content of a run file."""

    generator_md5: str
    params: dict[str, Any]
    tags: dict[str, str]


def write_run_file(path: Path, record: RunRecord) -> None:
    """Write `record` as JSON, atomically."""
    write_json({"generator_md5": record.generator_md5, "params": record.params,
                "tags": record.tags}, path)


def read_run_file(path: Path) -> RunRecord:
    """The record in `path`.

    Raises:
        UserError: if the file is missing or is not a run file the train stage wrote.
    """
    try:
        raw = json.loads(Path(path).read_text())
        record = RunRecord(raw["generator_md5"], dict(raw["params"]), dict(raw["tags"]))
    except (OSError, ValueError, KeyError, TypeError):
        record = None
    if record is None or not re.fullmatch(r"[0-9a-f]{32}", str(record.generator_md5)):
        raise UserError(f"{path}: not a run file of the train stage (it names the generator's "
                        "md5, params and tags); run the train stage first (`dvc repro train`)")
    return record


def default_run_name(params: dict) -> str:
    """A run's name outside a DVC experiment, before the commit: `paper-mnist-5k-28px`."""
    return (f"{params.get('train.arch')}-{params.get('fetch.dataset')}-"
            f"{params.get('preprocess.image_size')}px")


def kept_tag(selection: dict) -> dict[str, str]:
    """The `kept` run tag: which generator train delivered (train's selection.json, or the
    `kept` entry of metrics.json), e.g. `best ema generator, epoch 35`."""
    return {"kept": f"{selection.get('kept')} {selection.get('generator')} generator, "
                    f"epoch {selection.get('epoch')}"}
