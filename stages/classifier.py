"""Stage classifier: train the small CNN whose feature space the evaluation metrics use.

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/classifier.py --data data/processed/dataset \
        --classifier models/classifier.keras
"""

import json

from dcgan.runtime.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "data", "classifier")
    # Not at the top: see dcgan.runtime.stage.
    from dcgan.evaluation.classifier import fit_classifier
    result = fit_classifier(params.classifier, data_file=args.data, model_path=args.classifier)
    print(json.dumps(result))


if __name__ == "__main__":
    stage_main(main)
