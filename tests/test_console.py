"""Tests of the stages' console (dcgan.runtime.console, dcgan.runtime.progress): TensorFlow's
start-up noise is dropped from a real stage's stderr and from the `dcgan` command's, real
TensorFlow errors still print, and progress is a bar on a terminal and plain lines in a log.

Run with `pytest tests/test_console.py -q` (about 30 s on 2 cores: four real processes import
TensorFlow, started together by the `tf_runs` fixture; the rest takes a second).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from dcgan.runtime import console
from dcgan.runtime.progress import ProgressBar
from dcgan.runtime.watchdog import CHILD_ENV

# Lines TensorFlow 2.21 wrote to stderr here on import (no GPU), cut short, plus two that a
# CUDA build prints on a GPU machine and one that tf.data prints when a map first runs.
PRE_INIT = console.PRE_INIT.encode() + b"\n"
ONEDNN = (b"I0000 00:00:1796194090.496197   23865 port.cc:153] oneDNN custom operations are on. "
          b"You may see slightly different numerical results\n")
NO_DRIVER = (b"I0000 00:00:1796194090.497681   23865 cudart_stub.cc:31] Could not find cuda "
             b"drivers on your machine, GPU will not be used.\n")
CUINIT = (b"E0000 00:00:1796194095.802113   23865 cuda_platform.cc:52] failed call to cuInit: "
          b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
GUARD = (b"I0000 00:00:1796194291.339468   25354 cpu_feature_guard.cc:227] This TensorFlow "
         b"binary is optimized to use available CPU instructions in performance-critical "
         b"operations.\nTo enable the following instructions: AVX2 FMA, in other operations, "
         b"rebuild TensorFlow with the appropriate compiler flags.\n")
CUDNN = (b"E0000 00:00:1731000000.123456    4242 cuda_dnn.cc:8310] Unable to register cuDNN "
         b"factory: Attempting to register factory for plugin cuDNN when one has already been "
         b"registered\n")
NODE_DEF = (b"E0000 00:00:1796194880.232702    5238 node_def_util.cc:682] NodeDef mentions "
            b"attribute use_unbounded_threadpool which is not in the op definition: "
            b"Op<name=MapDataset> This may be expected ...\n")
NOISE = [PRE_INIT, ONEDNN, NO_DRIVER, CUINIT, GUARD, CUDNN, NODE_DEF]
# What must pass: an F line (TensorFlow's CHECK failure), an E line of another source, a
# stage's own lines, and a continuation-like line that follows no cpu_feature_guard line.
FATAL = (b"F0000 00:00:1796194470.888065   27617 control_flow_ops.cc:737] Abort_op "
         b"intentional failure; deliberate\n*** Check failure stack trace: ***\n")
OTHER = b"E0000 00:00:1796194470.888065   27617 loader.cc:42] could not read the SavedModel\n"
OURS = [b"evaluate: features: 5000 images in 1.5 s\n", b"error: params.yaml: bad\n",
        b"To enable the following instructions: not after the guard\n", b"I0000 not a log\n"]
# Any trace of the start-up noise in a real process's stderr.
NOISY = re.compile(r"^[IWE]\d{4} |absl::InitializeLog|oneDNN|cuInit|cuda|CUDA|"
                   r"To enable the following instructions", re.MULTILINE)


def filtered(chunks: list[bytes], gpu: bool = False) -> tuple[list[bytes], bytes]:
    """Each chunk's output of a fresh filter, and what its flush gives at the end."""
    noise = console.NoiseFilter(gpu=gpu)
    return [noise.feed(chunk) for chunk in chunks], noise.flush()


# ---------------------------------------------------------------- the filter, unit by unit


def test_the_noise_is_dropped_and_everything_else_passes_in_order() -> None:
    stream = [PRE_INIT, OURS[0], ONEDNN, NO_DRIVER, FATAL, GUARD, OURS[1], CUINIT, OTHER,
              CUDNN, OURS[2], NODE_DEF, OURS[3]]
    wanted = OURS[0] + FATAL + OURS[1] + OTHER + OURS[2] + OURS[3]
    out, rest = filtered(stream)  # a chunk per write, as a pipe passes them
    assert b"".join(out) + rest == wanted
    out, rest = filtered([b"".join(stream)])  # all at once
    assert b"".join(out) + rest == wanted
    data = b"".join(stream)
    out, rest = filtered([data[i:i + 1] for i in range(len(data))])  # a byte at a time
    assert b"".join(out) + rest == wanted


def test_ordinary_lines_and_progress_writes_pass_unchanged_and_at_once() -> None:
    writes = [b"\rpreprocess: decoding:  10%|#         | 512/5000",
              b"\rpreprocess: decoding:  20%|##        | 1024/5000", b" [00:01<00:04]",
              b"\n", b"a line\n", b"a line in two ", b"writes\n", b"Epoch 1/3", b"\n",
              b"E", b"xit 0\n", "größe ✓\n".encode()]
    out, rest = filtered(writes)
    # Each write comes out whole as soon as it goes in: no bar waits for its newline. The
    # one exception, a lone "E", could begin an error-level log line: it waits one write.
    assert out == [*writes[:9], b"", b"Exit 0\n", writes[-1]]
    assert rest == b""


def test_a_log_line_written_into_a_progress_bar_is_still_judged() -> None:
    bar = [b"\rtrain: epoch 1/3:   0%|          | 0/186", b"\rtrain: epoch 1/3:   1%|1"]
    out, rest = filtered([bar[0], NODE_DEF, bar[1], OTHER, b"\n"])
    assert out == [bar[0], b"", bar[1], OTHER, b"\n"]
    out, rest = filtered([bar[0] + NODE_DEF + bar[1]])  # in one read
    assert out == [bar[0] + bar[1]]


def test_where_there_is_a_gpu_its_probes_are_kept() -> None:
    out, rest = filtered([PRE_INIT, NO_DRIVER, CUINIT, CUDNN, ONEDNN], gpu=True)
    assert b"".join(out) == NO_DRIVER + CUINIT  # they may say why the GPU is unused


def test_an_unfinished_line_is_passed_on_at_the_end() -> None:
    out, rest = filtered([b"I0000 00:00:1796194090.496197   23865 port.cc:153] oneDNN"])
    assert out == [b""] and rest.endswith(b"oneDNN")  # it could still have become noise


# ---------------------------------------------------------------- real processes


STAGE = """import os, sys
from dcgan.runtime.stage import stage_main

def main():
    import tensorflow as tf
    mode = sys.argv[1]
    print("stage: starting", file=sys.stderr, flush=True)
    if mode == "reshape":  # an op error, raised as InvalidArgumentError
        tf.reshape(tf.zeros(6), (4, 4))
    elif mode == "abort":  # a C++ FATAL log line from TensorFlow, then SIGABRT
        graph = tf.Graph()
        with graph.as_default():
            op = tf.raw_ops.Abort(error_msg="deliberate, from test_console")
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(op)
    print(float(tf.reduce_sum(tf.ones((2, 3)))))

if __name__ == "__main__":
    stage_main(main)
"""


def _env(**extra: str) -> dict[str, str]:
    """This environment without the variables the console reads (pytest's process has
    imported dcgan, which set TF_CPP_MIN_LOG_LEVEL), plus `extra`."""
    skip = {CHILD_ENV, console.LOGS_ENV, console.TTY_ENV, "TF_CPP_MIN_LOG_LEVEL"}
    return {**{k: v for k, v in os.environ.items() if k not in skip}, **extra}


@pytest.fixture(scope="module")
def tf_runs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Four real processes that import TensorFlow, run together: a stage script (as dvc.yaml
    runs one) whose op fails, the same with DCGAN_TF_LOGS=1, one that TensorFlow aborts, and
    the `dcgan` command's path (stage_main with argv[0] `dcgan`, as its console script has)."""
    script = tmp_path_factory.mktemp("console") / "stage.py"
    script.write_text(STAGE)
    command = ("import sys; sys.argv[0] = 'dcgan'\n"
               + STAGE.split("if __name__")[0] + "stage_main(main)\n")
    started = {
        "reshape": ([sys.executable, str(script), "reshape"], _env()),
        "logs": ([sys.executable, str(script), "reshape"], _env(DCGAN_TF_LOGS="1")),
        "abort": ([sys.executable, str(script), "abort"], _env()),
        "command": ([sys.executable, "-c", command, "ok"], _env()),
    }
    procs = {name: subprocess.Popen(argv, env=env, cwd=script.parent, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (argv, env) in started.items()}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        print(f"--- {name}: exit {proc.returncode}\n{err}")  # with -s
        runs[name] = SimpleNamespace(code=proc.returncode, out=out, err=err)
    return SimpleNamespace(**runs)


@pytest.mark.slow
def test_a_stages_tensorflow_error_prints_without_the_noise(tf_runs: SimpleNamespace) -> None:
    run = tf_runs.reshape
    assert NOISY.findall(run.err) == []
    assert run.err.startswith("stage: starting\nTraceback")  # the stage's line is first
    assert ("InvalidArgumentError" in run.err and "Input to reshape is a tensor with 6 "
            "values, but the requested shape has 16" in run.err)
    assert run.code == 1


@pytest.mark.slow
def test_dcgan_tf_logs_shows_what_the_filter_drops(tf_runs: SimpleNamespace) -> None:
    """The noise is real here: with DCGAN_TF_LOGS=1 the same run prints it."""
    run = tf_runs.logs
    assert console.PRE_INIT in run.err and "oneDNN custom operations are on" in run.err
    if not console.gpu_present():
        assert "failed call to cuInit" in run.err
    assert "Input to reshape is a tensor with 6 values" in run.err


@pytest.mark.slow
def test_a_fatal_tensorflow_error_and_the_crash_still_print(tf_runs: SimpleNamespace) -> None:
    """TensorFlow logs a CHECK failure and aborts: the watchdog passes on all the child
    wrote before it died, then its own line."""
    run = tf_runs.abort
    lines = run.err.splitlines()
    fatal = next(i for i, line in enumerate(lines) if re.match(
        r"F\d{4} .* control_flow_ops\.cc:\d+\] Abort_op intentional failure; deliberate, "
        "from test_console$", line))
    assert lines[fatal + 1] == "*** Check failure stack trace: ***"
    assert re.fullmatch(r"error: stage stage crashed with SIGABRT at \d+\.\d GB peak memory "
                        r"of .+; the output above may say why", lines[-1]), lines[-1]
    assert NOISY.findall("\n".join(lines[:fatal])) == []
    assert run.code == 128 + signal.SIGABRT


@pytest.mark.slow
def test_the_dcgan_command_prints_no_noise(tf_runs: SimpleNamespace) -> None:
    run = tf_runs.command
    assert (run.code, run.out, run.err) == (0, "6.0\n", "stage: starting\n")


def test_the_command_s_relay_outlives_a_crash(tmp_path: Path) -> None:
    """What the `dcgan` command wrote just before it died still arrives, noise dropped."""
    code = textwrap.dedent(f"""
        import os, signal
        from dcgan.runtime import console
        with console.filtered_stderr():
            os.write(2, {PRE_INIT + ONEDNN!r} + b"last words\\n")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr) == (-signal.SIGKILL, b"last words\n")


# ---------------------------------------------------------------- progress


PROGRESS = """import sys, time
from dcgan.runtime import console
from dcgan.runtime.progress import ProgressBar
from dcgan.runtime.stage import stage_main

def main():
    print("terminal" if console.stderr_is_terminal() else "log", flush=True)
    with ProgressBar("stage: work", total=4, every_s=0.05) as bar:
        for _ in range(4):
            time.sleep(0.06)
            bar.update()

if __name__ == "__main__":
    stage_main(main)
"""


def _on_a_terminal(command: list[str], cwd: Path) -> str:
    """All a command writes to a pseudo-terminal (its stdout and stderr)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, cwd=cwd, env=_env(COLUMNS="80"), stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while select.select([leader], [], [], 30)[0]:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: every writer has gone
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=30) == 0, out
    return out.decode()


def test_a_stage_draws_a_bar_on_a_terminal_and_prints_lines_in_a_log(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(PROGRESS)
    # On a terminal the child's stderr is the watchdog's pipe, and still counts as one.
    shown = _on_a_terminal([sys.executable, str(script)], tmp_path)
    assert shown.startswith("terminal\r\n")
    assert re.search(r"\rstage: work: 100%\|█+\| 4/4 \[", shown), shown
    logged = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert logged.stdout == "log\n" and "\r" not in logged.stderr
    lines = logged.stderr.splitlines()
    assert re.fullmatch(r"stage: work: 4 images in \d\.\d s", lines[-1]), lines
    assert all(re.fullmatch(r"stage: work: [1-4]/4 images \(\d+%\), .* left", line)
               for line in lines[:-1]) and len(lines) >= 2, lines


def test_plain_progress_is_one_line_at_the_end_and_none_on_failure(
        capsys: pytest.CaptureFixture) -> None:
    with ProgressBar("evaluate: copy check", total=1000) as bar:
        for block in bar.over([list(range(250))] * 4, size=len):
            assert block
    assert re.fullmatch(r"evaluate: copy check: 1000 images in \d+\.\d s\n",
                        capsys.readouterr().err)
    with pytest.raises(ValueError), ProgressBar("preprocess: decoding", total=10) as bar:
        bar.update(5)
        raise ValueError("unreadable")
    assert capsys.readouterr().err == ""  # the error line will be the last word
