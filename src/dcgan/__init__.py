"""dcgan: the package behind the DVC pipeline, one subpackage per concern (core, runtime,
ingest, processed, nets, evaluation, sampling, training, tracking, serving, tools). Stage
scripts in stages/ are its entry points; each depends on what it imports
(docs/development.md)."""

import os

# TensorFlow's C++ INFO and WARNING lines drown the stage output. A user who wants them sets
# TF_CPP_MIN_LOG_LEVEL themselves, or DCGAN_TF_LOGS=1 for all of TensorFlow's logs (the
# start-up lines this level cannot hold back are filtered: dcgan.runtime.console).
if os.environ.get("DCGAN_TF_LOGS", "") in ("", "0"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# oneDNN's CPU kernels: TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI,
# AVX-512 BF16 or AMX. On an AVX2 CPU they speed up the float32 train step too (the `onednn`
# lever in docs/performance.md), so they are on everywhere; TF_ENABLE_ONEDNN_OPTS=0 set by
# the user turns them off. Read once, when TensorFlow is first imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
