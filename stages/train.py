"""Stage train: train the DCGAN with fit(), tracked as one MLflow run.

Run by DVC (see dvc.yaml for the paths it passes; `--help` lists them); it resumes from
the last completed epoch if a checkpoint for the same params exists.
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    from dcgan.training.train import TrainOutputs, train  # not at the top: see dcgan.runtime.stage

    params, args = stage_args(__doc__, "data", "classifier", bundle=TrainOutputs)
    result = train(params, data_file=args.data, classifier_path=args.classifier, out=args.bundle)
    print(json.dumps(result))


if __name__ == "__main__":
    stage_main(main)
