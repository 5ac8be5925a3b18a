"""MLflow as a projection of DVC's outputs: the sync step.

DVC's outputs are the truth; the MLflow store shows them. `sync()` makes the store hold
the run of the generator that the outputs name (in the run file), complete: params and
tags, the per-epoch history, the quality curve, the epoch grids, the GIF and the other
files, the registered generator, the evaluate and probe metrics, and the registry alias.

It finds the run by the generator's md5 (train logs it live, and tags it at the end). In
a clone with no such run (pulled, restored from DVC's run-cache, or a new tracking
server), it makes a new one from the outputs. It logs only what the run lacks, so a
second sync adds nothing. The `track` stage of dvc.yaml runs it, and writes what it
returns under `shown` as its output (dvc.yaml's `tracked`, neither cached nor in git): a
plain `dvc repro` reruns track wherever that file is absent or differs, which covers a
fresh clone, `dvc pull`, `dvc exp apply` and `dvc checkout`. `dcgan sync` runs the stage's
command by hand, for the one case DVC cannot see: a store that was deleted or replaced
(another `MLFLOW_TRACKING_URI`) while the file stayed.

Metrics are taken only when dvc.lock says they were measured on this generator: a
`dvc repro train` alone leaves an older generator's metrics.json in place, and those
must not be shown as this one's.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from dcgan.core.errors import UserError
from dcgan.core.outputs import file_md5
from dcgan.tracking import protocol, queries, registry
from dcgan.tracking.runfile import RunRecord, default_run_name, kept_tag, read_run_file
from dcgan.tracking.runlog import RunLog


@dataclass(frozen=True)
class SyncPaths:
    """The DVC outputs the sync step reads; dvc.yaml's track stage passes each once."""

    run_file: Path
    history: Path
    quality: Path
    grids: Path
    gif: Path
    generator: Path
    discriminator: Path
    generated: Path
    metrics: Path
    probe: Path
    lock: Path = Path("dvc.lock")


class _Lock:
    """dvc.lock's md5s and params, by stage and path (empty when there is no lock)."""

    def __init__(self, path: Path):
        lock = yaml.safe_load(path.read_text()) if path.exists() else None
        self.stages = (lock or {}).get("stages", {})

    def md5(self, stage: str, kind: str, path: Path) -> str | None:
        for entry in self.stages.get(stage, {}).get(kind, []):
            if Path(entry["path"]) == Path(path):
                return entry.get("md5")
        return None

    def params(self, stage: str) -> dict:
        return self.stages.get(stage, {}).get("params", {}).get("params.yaml", {})

    def produced(self, stage: str, path: Path, dep: Path, dep_md5: str | None) -> bool:
        """Whether `stage` wrote the file `path` as it is now, from its input `dep` as it
        was at `dep_md5`. With no dvc.lock at all, the files are trusted."""
        if not self.stages:
            return Path(path).is_file()
        return (dep_md5 is not None and self.md5(stage, "deps", dep) == dep_md5
                and Path(path).is_file() and self.md5(stage, "outs", path) == file_md5(path))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _train_part(log: RunLog, paths: SyncPaths, ema: bool) -> int:
    """History, quality curve (G's moving average and G, with `ema`) and epoch grids, by
    epoch; the train files as artifacts."""
    logged = 0
    for row in _rows(paths.history):
        epoch = int(row.pop("epoch"))
        logged += log.metrics({k: float(v) for k, v in row.items()}, step=epoch)
    for row in _rows(paths.quality):
        scores = {"epoch_frechet_distance": float(row["frechet_distance"])}
        if ema and row.get("frechet_distance_raw"):
            scores["epoch_frechet_distance_raw"] = float(row["frechet_distance_raw"])
        logged += log.metrics(scores, step=int(row["epoch"]))
    for grid in sorted(paths.grids.glob("epoch_*.png")):
        with Image.open(grid) as image:
            logged += log.image(np.asarray(image), "epoch_grid", int(grid.stem.split("_")[1]))
    logged += log.artifacts([paths.history, paths.quality, paths.gif, paths.discriminator],
                            "train")
    return logged


def _downstream_part(log: RunLog, paths: SyncPaths, lock: _Lock,
                     md5: str) -> tuple[int, list[Path]]:
    """Generate's pictures, evaluate's and probe's metrics, where dvc.lock says they come
    from this generator; each stage's params as tags. Returns how many were logged and
    the metrics files the run shows."""
    logged, shown = 0, []
    from_this = not lock.stages or lock.md5("generate", "deps", paths.generator) == md5
    if from_this:
        pictures = [paths.generated / "grid.png", paths.generated / "interpolation.png"]
        logged += log.artifacts([p for p in pictures if p.exists()], "generate")
    samples = lock.md5("generate", "outs", paths.generated)
    if from_this and lock.produced("evaluate", paths.metrics, paths.generated, samples):
        metrics = _json(paths.metrics)
        measured_under = metrics.pop("protocol", None)
        logged += log.metrics(metrics)  # numbers only: kept.epoch, not kept.generator
        shown.append(paths.metrics)
        if measured_under:
            log.tags(protocol.tags(measured_under))
        if metrics.get("kept"):
            log.tags(kept_tag(metrics["kept"]))
    else:
        _stale(paths.metrics)
    trained = lock.md5("train", "outs", paths.discriminator)
    if lock.produced("probe", paths.probe, paths.discriminator, trained or None):
        logged += log.metrics(_json(paths.probe))
        shown.append(paths.probe)
    else:
        _stale(paths.probe)
    for stage in ("generate", "evaluate", "probe"):
        section = lock.params(stage).get(stage, {})
        log.tags({f"{stage}.{k}": v for k, v in section.items()})
    return logged, shown


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _stale(path: Path) -> None:
    print(f"warning: {path} was not measured on this generator (dvc.lock); left out of the "
          "MLflow run: run `dvc repro` to measure it", file=sys.stderr)


def sync(paths: SyncPaths) -> dict:
    """Make the MLflow store hold the complete run of the outputs' generator.

    Returns:
        The run id, whether the run was made now, how many values and files were logged,
        the registered version, the version the `best-<dataset>` alias names, and under
        `shown` the same facts free of the store's ids (`_shown`), for the track stage's
        output.

    Raises:
        UserError: if the run file is missing or broken, a train output is missing, or the
            store is unreachable.
    """
    record = read_run_file(paths.run_file)
    missing = [str(p) for p in (paths.history, paths.quality, paths.grids, paths.gif,
                                paths.generator, paths.discriminator) if not p.exists()]
    if missing:
        raise UserError(f"sync: {', '.join(missing)} missing; run `dvc pull` (or `dvc repro`) "
                        "first, then sync again")
    lock = _Lock(paths.lock)
    runs = queries.runs_of_generator(record.generator_md5)
    tags = {**record.tags, "generator_md5": record.generator_md5}
    name = default_run_name(record.params)
    with RunLog.open(record.params, tags, name,
                     resume=runs[0].info.run_id if runs else None) as log:
        logged = _train_part(log, paths, bool(record.params.get("train.ema_half_life")))
        downstream, measured = _downstream_part(log, paths, lock, record.generator_md5)
        logged += downstream
        versions = registry.versions_of(log.run_id)
        if not versions:
            from dcgan.nets.serialisation import load_model  # TensorFlow: only when needed

            generator = load_model(paths.generator, remedy="run the train stage first")
            versions = [registry.log_generator(log.run_id, generator, tags)]
            logged += 1
    alias = registry.promote_best(log.run_id)
    return {"run_id": log.run_id, "created": not runs, "logged": logged,
            "version": versions[-1], "best_version": alias,
            "shown": _shown(record, paths, measured)}


def _shown(record: RunRecord, paths: SyncPaths, measured: list[Path]) -> dict:
    """What the store shows once `sync` is done, told from the outputs alone: no run id,
    no version number, no time, so that the same outputs give the same bytes in any clone
    and store (the track stage's output, whose md5 dvc.lock records).

    The metrics files shown are named with their md5, not just their names: after `dvc exp
    apply` of an experiment with the same generator but other metrics (another probe seed),
    the file differs, so DVC reruns track, which updates the run's values. The alias is the
    one this run's Fréchet distance competes for, whichever version it names."""
    dataset = record.tags.get("dataset")
    scored = paths.metrics in measured and isinstance(
        _json(paths.metrics).get("frechet_distance"), int | float)
    return {"generator_md5": record.generator_md5,
            "epochs": len(_rows(paths.history)),
            "metrics": {str(p): file_md5(p) for p in measured},
            "registered_model": registry.REGISTERED_MODEL,
            "alias": registry.best_alias(dataset) if scored and dataset else None}
