"""Stage train: train the DCGAN with fit(), tracked as one MLflow run.

Run by DVC (see dvc.yaml for the paths it passes); it resumes from the last
completed epoch if a checkpoint for the same params exists.
"""

import json

from dcgan.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(
        __doc__, "data", "classifier", "generator", "discriminator", "history", "quality", "grids",
        "gif", "run_file", "checkpoints",
    )
    from dcgan.training import TrainOutputs, train  # not at the top: see dcgan.stage
    out = TrainOutputs(
        generator=args.generator, discriminator=args.discriminator, history=args.history,
        quality=args.quality, grids=args.grids, gif=args.gif, run_file=args.run_file,
        checkpoints=args.checkpoints,
    )
    result = train(params, data_file=args.data, classifier_path=args.classifier, out=out)
    print(json.dumps(result))


if __name__ == "__main__":
    stage_main(main)
