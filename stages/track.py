"""Stage track: make the MLflow store show the DVC outputs (the sync step).

Finds the MLflow run of the generator named in the run file, or makes it, and logs what it
lacks: history, quality curve, grids, files, the registered generator, the evaluate and
probe metrics, and the `best-<dataset>` alias. A second run adds nothing. Run by DVC (see
dvc.yaml), and by `dcgan sync` after `git clone`, `dvc pull` or `dvc exp apply`.
"""

import json

from dcgan.core.stage import stage_args, stage_main


def main() -> None:
    from dcgan.tracking.sync import SyncPaths, sync  # not at the top: see dcgan.core.stage

    _, args = stage_args(__doc__, bundle=SyncPaths)
    print(json.dumps(sync(args.bundle)))


if __name__ == "__main__":
    stage_main(main)
