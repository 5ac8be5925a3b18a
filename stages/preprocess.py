"""Stage preprocess: decode, resize and split the raw dataset into uint8 arrays (a directory).

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/preprocess.py --raw data/raw --data data/processed/dataset \
        --stats data/processed/stats.json
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "raw", "data", "stats")
    from dcgan.ingest.preprocessing import preprocess  # not at the top: see dcgan.runtime.stage
    stats = preprocess(params.preprocess, raw_dir=args.raw, out_dir=args.data,
                       stats_file=args.stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    stage_main(main)
