"""dcgan: the package behind the DVC pipeline, one subpackage per concern (core, data,
dataset, nets, features, evaluation, sampling, training, tracking, tools). Stage scripts
in stages/ are its entry points; each depends on what it imports (docs/development.md)."""

import os

# TensorFlow's C++ INFO and WARNING lines drown the stage output. A user who wants them sets
# TF_CPP_MIN_LOG_LEVEL themselves, or DCGAN_TF_LOGS=1 for all of TensorFlow's logs (the
# start-up lines this level cannot hold back are filtered: dcgan.runtime.console).
if os.environ.get("DCGAN_TF_LOGS", "") in ("", "0"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
