"""Stage evaluate: score generated samples in the classifier's feature space.

Writes the metrics JSON that dvc.yaml declares as DVC metrics (the track stage shows
them in the generator's MLflow run). Run by DVC (see dvc.yaml).
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "data", "samples", "classifier", "selection", "metrics")
    from dcgan.evaluation.evaluate import evaluate  # not at the top: see dcgan.runtime.stage
    metrics = evaluate(
        params.evaluate, data_file=args.data, samples_file=args.samples,
        classifier_path=args.classifier, metrics_file=args.metrics,
        selection_file=args.selection,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    stage_main(main)
