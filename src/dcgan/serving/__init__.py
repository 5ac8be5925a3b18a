"""Using a trained generator outside the pipeline: where it comes from (source), pictures
from it (sample), exports to other runtimes (export), and the pyfunc flavour MLflow serves
(pyfunc)."""
