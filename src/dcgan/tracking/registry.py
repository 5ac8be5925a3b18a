"""The model registry: every trained generator is a version of `dcgan-generator`, and the
alias `best-<dataset>` names the version with the lowest Fréchet distance.

The sync step (tracking.sync) registers a run's generator once and then moves the alias.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

from dcgan.tracking import protocol
from dcgan.tracking.store import use_store

if TYPE_CHECKING:  # keras is imported where it is used, so `dcgan compare` starts fast
    import keras

# Every trained generator becomes a version of this registered model.
REGISTERED_MODEL = "dcgan-generator"
# The pyfunc loader's module name inside each logged model (serving/pyfunc.py, copied).
PYFUNC_MODULE = "dcgan_generator_pyfunc"


class _GeneratorFlavors:
    """`mlflow.keras` plus a pyfunc flavour that answers with pictures (serving.pyfunc).

    The Keras flavour stays as MLflow writes it, so `mlflow.keras.load_model(uri)` gives
    the Keras generator; `mlflow models serve` and `mlflow.pyfunc.load_model` use the
    pyfunc flavour, whose loader (serving/pyfunc.py) is copied into the model's `code/`
    folder so that the model loads without the dcgan package.

    Also makes the model directory first: MLflow 3.17's Keras `save_model` writes the
    input example before it creates that directory, so `log_model(...,
    input_example=...)` fails with FileNotFoundError on input_example.json.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, mlflow_model: mlflow.models.Model, **kwargs: Any) -> None:
        from mlflow import pyfunc

        from dcgan.serving import pyfunc as loader

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        os.makedirs(os.path.join(path, "code"), exist_ok=True)
        shutil.copyfile(loader.__file__, os.path.join(path, "code", f"{PYFUNC_MODULE}.py"))
        flavor = mlflow_model.flavors.pop(pyfunc.FLAVOR_NAME)
        pyfunc.add_to_model(mlflow_model, loader_module=PYFUNC_MODULE, code="code",
                            conda_env=flavor.get("env", {}).get("conda"),
                            python_env=flavor.get("env", {}).get("virtualenv"))
        mlflow_model.save(os.path.join(path, "MLmodel"))


def versions_of(run_id: str) -> list[int]:
    """The registered versions of `REGISTERED_MODEL` logged by run `run_id`."""
    client = mlflow.MlflowClient()
    return sorted(int(mv.version) for mv in client.search_model_versions(
        f"name = '{REGISTERED_MODEL}' and run_id = '{run_id}'"))


def log_generator(run_id: str, generator: keras.Model, tags: dict[str, str]) -> int:
    """Log the generator to run `run_id` as an MLflow model with a Keras flavour and a
    pyfunc flavour that answers with pixels (see `_GeneratorFlavors`), with a signature,
    its `format` parameter and an input example, and register it as a new version of
    `REGISTERED_MODEL` carrying `tags`.

    Returns:
        The new model version's number.
    """
    from dcgan.serving.pyfunc import GeneratorImages

    requirements = [f"tensorflow=={_version('tensorflow')}", f"keras=={_version('keras')}",
                    f"pillow=={_version('pillow')}"]
    # Input: a batch of noise vectors z; output: what the pyfunc flavour answers by default,
    # uint8 pixels; the inference parameter `format` picks pixels, png or raw.
    z = np.random.default_rng(0).standard_normal((2, generator.input_shape[-1])).astype("float32")
    pixels = GeneratorImages(generator).predict(z)
    signature = mlflow.models.infer_signature(z, pixels, params={"format": "pixels"})
    # MLflow 3 files the logged model under the active run's experiment: reopen the run
    # for this call only (RunLog itself never uses MLflow's active run).
    with mlflow.start_run(run_id=run_id):
        info = mlflow.models.Model.log(
            artifact_path=None, name="generator", flavor=_GeneratorFlavors, model=generator,
            signature=signature, input_example=z, pip_requirements=requirements,
            registered_model_name=REGISTERED_MODEL,
        )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, str(version), key, value)
    return version


def best_alias(dataset: str) -> str:
    """The registry alias that marks the best generator of `dataset`, e.g. `best-mnist-5k`."""
    return f"best-{dataset}"


def promote_best(run_id: str, metric: str = "frechet_distance") -> int | None:
    """Move the alias `best_alias(<run's dataset>)` to the registered generator version
    with the lowest `metric` among FINISHED runs of that dataset, in any experiment,
    measured under the run's protocol (tracking.protocol): scores of another classifier,
    N or seed do not compare.

    Call it after the run has closed, so that it counts as finished.

    Returns:
        The version the alias now names, or None if no finished run of the dataset has
        both the metric and a registered generator.
    """
    use_store()
    client = mlflow.MlflowClient()
    run_tags = client.get_run(run_id).data.tags
    dataset = run_tags.get("dataset")
    if dataset is None:
        return None
    versions = {}  # run id -> its newest registered version
    for mv in client.search_model_versions(f"name = '{REGISTERED_MODEL}'"):
        versions[mv.run_id] = max(versions.get(mv.run_id, 0), int(mv.version))
    candidates = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"attributes.status = 'FINISHED' and tags.dataset = '{dataset}'",
    )
    measured_under = run_tags.get(protocol.TAG)
    scored = [(r.data.metrics[metric], r.info.start_time, r.info.run_id) for r in candidates
              if metric in r.data.metrics and r.info.run_id in versions
              and r.data.tags.get(protocol.TAG) == measured_under]
    if not scored:
        return None
    best_run = min(scored)[2]  # ties: the earlier run keeps the alias
    client.set_registered_model_alias(REGISTERED_MODEL, best_alias(dataset), versions[best_run])
    return versions[best_run]


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
