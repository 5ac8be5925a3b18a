"""The pyfunc flavour MLflow serves: the registered generator as a model that returns images
(`mlflow models serve`). The CLI's sample and export are in tools."""
