"""Stage probe: the paper's linear probe on the discriminator's features (section 5.1).

Fits a linear L2-SVM on D's pooled conv activations, a random D's and raw pixels for a
few labelled training-set sizes, and writes the metrics JSON that dvc.yaml
declares (the track stage shows them in the generator's MLflow run). Run by DVC (see dvc.yaml).
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "data", "discriminator", "metrics")
    from dcgan.evaluation.probe import probe  # not at the top: see dcgan.runtime.stage
    metrics = probe(
        params.probe, data_file=args.data, discriminator_path=args.discriminator,
        metrics_file=args.metrics,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    stage_main(main)
