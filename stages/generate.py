"""Stage generate: sample the trained generator into an array, a grid and latent walks.

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/generate.py --generator models/generator.keras --out data/generated
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "generator", "out")
    from dcgan.sampling.generate import generate  # not at the top: see dcgan.runtime.stage
    summary = generate(params.generate, generator_path=args.generator, out_dir=args.out)
    print(json.dumps(summary))


if __name__ == "__main__":
    stage_main(main)
