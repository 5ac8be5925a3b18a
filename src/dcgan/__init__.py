"""dcgan: the package behind the DVC pipeline (config, data, model, training, sampling,
classifier, metrics, tracking). Stage scripts in stages/ are its entry points."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) drowns the stage output;
# a user who wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
