"""Stage classifier: train the small CNN whose feature space the evaluation metrics use.

Run by DVC (see dvc.yaml), or by hand from the repo root:
    python stages/classifier.py --data data/processed/dataset \
        --classifier models/classifier.keras
"""

import json

from dcgan.core.stage import stage_args, stage_main


def main() -> None:
    params, args = stage_args(__doc__, "data", "classifier")
    from dcgan.features.classifier import fit_classifier  # not at the top: see dcgan.core.stage
    result = fit_classifier(params.classifier, data_file=args.data, model_path=args.classifier)
    print(json.dumps(result))


if __name__ == "__main__":
    stage_main(main)
