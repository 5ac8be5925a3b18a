"""dcgan: the package behind the DVC pipeline, one subpackage per concern (core, data,
dataset, nets, features, evaluation, sampling, training, tracking, tools). Stage scripts
in stages/ are its entry points; each depends on what it imports (README: Layout)."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) drowns the stage output;
# a user who wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
