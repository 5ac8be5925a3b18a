"""Stage evaluate: score generated samples in the classifier's feature space.

Writes the metrics JSON that dvc.yaml declares as DVC metrics, and logs the
same numbers to the model's MLflow run. Run by DVC (see dvc.yaml).
"""

import json

from dcgan.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "data", "samples", "classifier", "metrics", "run_file")
    from dcgan.evaluation import evaluate  # not at the top: see dcgan.stage
    metrics = evaluate(
        params.evaluate, data_file=args.data, samples_file=args.samples,
        classifier_path=args.classifier, metrics_file=args.metrics, run_file=args.run_file,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    stage_main(main)
