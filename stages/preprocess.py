"""Stage preprocess: resize, scale to [-1, 1] and split the raw dataset into one npz.

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/preprocess.py --raw data/raw --data data/processed/dataset.npz \
        --stats data/processed/stats.json
"""

import json

from dcgan.data import preprocess
from dcgan.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "raw", "data", "stats")
    stats = preprocess(params.preprocess, raw_dir=args.raw, out_file=args.data,
                       stats_file=args.stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    stage_main(main)
