"""Stage track: make the MLflow store show the DVC outputs (the sync step).

Finds the MLflow run of the generator named in the run file, or makes it, and logs what it
lacks: history, quality curve, grids, files, the registered generator, the evaluate and
probe metrics, and the `best-<dataset>` alias. A second run adds nothing. Run by DVC (see
dvc.yaml); `dcgan sync` runs the same command by hand.

Then, and only then, it writes `--tracked`: what the store now shows, free of run ids and
times, so the same outputs give the same bytes. That file is neither cached nor in git, so
a plain `dvc repro` reruns this stage wherever it is absent or differs (a fresh clone, `dvc
pull`, `dvc exp apply`, `dvc checkout`) and the store is complete after it. It is written
atomically after the store is complete, and DVC deletes it before the stage runs, so a
failed track leaves none and the next `dvc repro` tries again.
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    from dcgan.core.outputs import write_json  # not at the top: see dcgan.runtime.stage
    from dcgan.tracking.sync import SyncPaths, sync

    _, args = stage_args(__doc__, "tracked", bundle=SyncPaths)
    result = sync(args.bundle)
    write_json(result.pop("shown"), args.tracked)
    print(json.dumps(result))


if __name__ == "__main__":
    stage_main(main)
