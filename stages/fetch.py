"""Stage fetch: write the raw dataset named by `fetch.dataset` to --raw.

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/fetch.py --raw data/raw --cache data/cache
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "raw", "cache")
    from dcgan.ingest.fetch import fetch  # not at the top: see dcgan.runtime.stage
    summary = fetch(params.fetch, out_dir=args.raw, cache_dir=args.cache)
    print(json.dumps(summary))


if __name__ == "__main__":
    stage_main(main)
