"""Where our train step spends its time, kernel by kernel: the profile that
`python -m benchmarks train --peer pytorch --components` adds to its record.

oneDNN logs each primitive it executes, with its wall time, when `ONEDNN_VERBOSE` is
`profile_exec`. The step runs in a fresh process with one inter-op thread, so that no two
kernels overlap and their times add up to the step's. Two runs of different lengths with
the same warm-up cancel tracing and warm-up: their difference, divided by the extra steps,
is one step. What the oneDNN kernels leave of the step is the rest: Eigen's ops
(activations, casts, element-wise maths, the optimizer), TensorFlow's executor and Keras.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

from benchmarks.records import child_env, in_fresh_process
from dcgan.core.errors import UserError

RESULT = "KERNELS-RESULT "  # marks the measured rate among oneDNN's lines on stdout


def step_parts(batch_size: int, image_size: int) -> dict:
    """The parts of our step in float32 and bfloat16: each part on its own
    (`benchmarks.peer.component_ms`), and the whole step kernel by kernel (`kernel_ms`)."""
    precisions = ("float32", "mixed_bfloat16")
    sizes = {"batch_size": batch_size, "image_size": image_size}
    return {"component_ms": {p: in_fresh_process("benchmarks.peer", "component_ms",
                                                  {"precision": p, **sizes})
                             for p in precisions},
            "kernel_ms": {p: kernel_ms(p, **sizes) for p in precisions}}


def kernel_ms(precision: str, batch_size: int = 128, image_size: int = 64,
              steps: tuple[int, int] = (4, 12)) -> dict:
    """Milliseconds per train step of the default recipe (paper arch, alternating) in each
    oneDNN kernel ("primitive implementation propagation"), the step itself, and the rest.

    Raises:
        UserError: if a measuring process fails.
    """
    (short_rate, short), (long_rate, long) = (
        _verbose_run(precision, batch_size, image_size, n) for n in steps)
    extra = steps[1] - steps[0]
    step_ms = 1000 * batch_size * (steps[1] / long_rate - steps[0] / short_rate) / extra
    kernels = {key: (long[key] - short.get(key, 0.0)) / extra for key in long}
    kernels = {k: round(v, 1) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])
               if v >= 0.05}
    return {"step_ms": round(step_ms, 1), "onednn_ms": kernels,
            "onednn_total_ms": round(sum(kernels.values()), 1),
            "rest_ms": round(step_ms - sum(kernels.values()), 1)}


def _verbose_run(precision: str, batch_size: int, image_size: int,
                 steps: int) -> tuple[float, dict[str, float]]:
    """Images/s of `steps` timed steps in a fresh process, and oneDNN's milliseconds per
    kernel over the whole run (warm-up included)."""
    args = dict(contender="ours", arch="paper", batch_size=batch_size, precision=precision,
                steps=steps, warmup=3, image_size=image_size, channels=3, filters=64)
    code = (f"import json, sys; from benchmarks.step import measure; "
            f"print({RESULT!r} + json.dumps(measure(**json.loads(sys.argv[1]))), flush=True)")
    env = child_env(ONEDNN_VERBOSE="profile_exec", TF_NUM_INTEROP_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, env=env)
    rates = [line[len(RESULT):] for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not rates:
        raise UserError(f"the oneDNN profile of {precision} failed: "
                        f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(rates[0]), _kernel_totals(proc.stdout.splitlines())


def _kernel_totals(lines: list[str]) -> dict[str, float]:
    """Milliseconds per kernel in oneDNN's `profile_exec` lines:
    onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,<propagation>,...,<ms>
    """
    totals: dict[str, float] = collections.defaultdict(float)
    for line in lines:
        fields = line.split(",")
        if fields[:4] == ["onednn_verbose", "v1", "primitive", "exec"] and len(fields) > 8:
            totals[" ".join(fields[5:8])] += float(fields[-1])
    return dict(totals)
