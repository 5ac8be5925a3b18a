"""Unit tests of dcgan.runtime.stage.stage_main: how any stage (and the `dcgan` command) ends on
an error, in this process and, for a stage run as a program, under the watchdog parent
(dcgan.runtime.watchdog) that reports a kill by the out-of-memory killer. Run with
`pytest tests/test_stage.py -q` (a few seconds; `-s` prints the watchdog's lines).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from dcgan.core.errors import UserError
from dcgan.runtime.stage import stage_main
from dcgan.runtime.watchdog import CHILD_ENV, killed_line, memory_total

STAGES = Path(__file__).resolve().parents[1] / "stages"


def _raising(err: BaseException):
    def main() -> None:
        raise err
    return main


@pytest.mark.parametrize("err, code, line", [
    (UserError("params.yaml: bad"), 2, "error: params.yaml: bad"),
    (OSError(errno.ENOSPC, "No space left on device", "data/x.npy"), 2,
     "error: no space left on device writing data/x.npy; free space there and rerun"),
    (OSError(errno.ENOSPC, "No space left on device"), 2,
     "error: no space left on device; free space there and rerun"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
])
def test_errors_end_in_one_line(err: BaseException, code: int, line: str,
                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        stage_main(_raising(err))
    assert exit_info.value.code == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_closed_pipe_ends_quietly(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:  # `dcgan compare | head`
        stage_main(_raising(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert exit_info.value.code == 0
    assert capsys.readouterr().err == ""


def test_other_os_errors_are_not_hidden() -> None:
    with pytest.raises(PermissionError):  # a bug, not bad input: the traceback is wanted
        stage_main(_raising(PermissionError(errno.EACCES, "Permission denied")))


def test_a_memory_error_ends_in_one_line(capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["stages/evaluate.py"])
    with pytest.raises(SystemExit) as exit_info:
        stage_main(_raising(MemoryError()))
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"error: out of memory in stage evaluate \(peak \d+\.\d GB of "
                        rf"{re.escape(memory_total())}\); lower generate\.num_samples or "
                        r"evaluate\.batch_size, or free memory, then rerun", line), line


def test_tensorflows_device_oom_ends_in_one_line(capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    class ResourceExhaustedError(RuntimeError):  # TensorFlow's, matched by name
        pass

    monkeypatch.setattr(sys, "argv", ["stages/train.py"])
    with pytest.raises(SystemExit) as exit_info:
        stage_main(_raising(ResourceExhaustedError("OOM when allocating tensor")))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: out of accelerator memory in stage train (ResourceExhaustedError); lower "
        "train.batch_size or preprocess.image_size, or free memory, then rerun"]


# ---------------------------------------------------------------- the watchdog parent
# Each test writes a stage-like script, train.py, and runs it as DVC runs a stage: a
# real `python train.py` process, which becomes the watchdog parent of a child that runs
# its main().

SCRIPT = """import json, os, resource, signal, sys, time
from dcgan.core.errors import UserError
from dcgan.runtime.stage import stage_main

def main():
{body}

if __name__ == "__main__":
    stage_main(main)
"""


def stage_script(tmp_path: Path, body: str) -> list[str]:
    """The command that runs a script `train.py` whose main() runs `body`."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    return [sys.executable, str(script)]


def _default_sigint() -> None:
    # A shell without job control starts `cmd &` with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN: the stage would then ignore the SIGINT these tests send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != CHILD_ENV}
    return subprocess.Popen(command, cwd=Path(command[1]).parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    print(err)  # the line, with -s
    assert "Traceback" not in err
    return proc.returncode, out, err


def test_a_stage_runs_in_a_child_and_passes_its_output_and_status(tmp_path: Path) -> None:
    command = stage_script(tmp_path, """
        print(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "ppid": os.getppid(),
                          "env": os.environ.get("DCGAN_STAGE_CHILD")}))
        print("second line")
        raise SystemExit(3)
    """)
    proc = start([*command, "--data", "a b.npz"])
    code, out, err = finish(proc)
    first, second = out.splitlines()
    child = json.loads(first)
    assert child["ppid"] == proc.pid != child["pid"]  # main() ran in a child of the stage
    assert child["argv"] == ["--data", "a b.npz"]
    assert child["env"] is None  # seen by stage_main, not passed on to the child's children
    assert second == "second line"
    assert (code, err) == (3, "")


def test_the_oom_killers_sigkill_ends_in_one_line(tmp_path: Path) -> None:
    command = stage_script(tmp_path, """
        held = b"x" * 300_000_000  # written, so resident: the peak the line reports
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer sends
    """)
    code, out, err = finish(start(command))
    [line] = err.splitlines()
    match = re.fullmatch(rf"error: stage train was killed \(SIGKILL\) (?:by the kernel's "
                         rf"out-of-memory killer )?at (\d+\.\d) GB peak memory of "
                         rf"{re.escape(memory_total())}(?:: most likely the kernel's "
                         r"out-of-memory killer)?; lower train\.batch_size or "
                         r"preprocess\.image_size, or free memory, then rerun", line)
    assert match, line
    assert float(match[1]) >= 0.3  # the child's peak, not the 13 MB parent's
    assert code == 2


def test_a_sigkill_the_cgroup_counted_is_the_oom_killers() -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line, code = killed_line("classifier", signal.SIGKILL, usage, oom_killed=True)
    assert re.fullmatch(r"stage classifier was killed \(SIGKILL\) by the kernel's "
                        r"out-of-memory killer at \d+\.\d GB peak memory of .+; lower "
                        r"classifier\.batch_size, or free memory, then rerun", line), line
    assert code == 2


def test_a_crash_in_the_child_ends_in_one_line(tmp_path: Path) -> None:
    code, out, err = finish(start(stage_script(tmp_path, """
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
        os.kill(os.getpid(), signal.SIGSEGV)
    """)))
    assert re.fullmatch(r"error: stage train crashed with SIGSEGV at \d+\.\d GB peak memory "
                        r"of .+; the output above may say why\n", err), err
    assert code == 128 + signal.SIGSEGV


def test_a_user_error_in_the_child_is_printed_once(tmp_path: Path) -> None:
    code, out, err = finish(start(stage_script(tmp_path, """
        raise UserError("params.yaml: train.epochs = 0 is invalid")
    """)))
    assert (code, err) == (2, "error: params.yaml: train.epochs = 0 is invalid\n")


def test_a_memory_error_in_the_child_ends_in_one_line(tmp_path: Path) -> None:
    code, out, err = finish(start(stage_script(tmp_path, """
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))
        held = b"x" * (2 << 30)  # more than the 1 GB of address space now allowed
    """)))
    [line] = err.splitlines()
    assert line.startswith("error: out of memory in stage train (peak "), line
    assert line.endswith("; lower train.batch_size or preprocess.image_size, or free "
                         "memory, then rerun")
    assert code == 2


@pytest.mark.parametrize("sig, code, line", [
    (signal.SIGTERM, 143, "error: stage train was stopped by SIGTERM"),
    (signal.SIGINT, 130, "error: interrupted"),  # the child's KeyboardInterrupt, once
])
def test_a_signal_to_the_stage_reaches_its_child(sig: int, code: int, line: str,
                                                 tmp_path: Path) -> None:
    proc = start(stage_script(tmp_path, """
        print(os.getpid(), flush=True)
        time.sleep(60)
    """))
    child = int(proc.stdout.readline())
    proc.send_signal(sig)  # as `kill` sends it: to the stage's pid alone
    assert finish(proc)[::2] == (code, f"{line}\n")
    with pytest.raises(ProcessLookupError):  # reaped by the parent: gone
        os.kill(child, 0)


def test_a_stage_killed_with_sigkill_leaves_no_child_running(tmp_path: Path) -> None:
    proc = start(stage_script(tmp_path, """
        print(os.getpid(), flush=True)
        time.sleep(60)
    """))
    child = psutil.Process(int(proc.stdout.readline()))
    proc.kill()  # `kill -9` of the stage's pid: the child follows its parent
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    deadline = time.monotonic() + 10
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or dead and not yet reaped
        while child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.01)


def test_no_stage_script_imports_the_heavy_modules_before_main() -> None:
    """The watchdog parent runs a stage script's top level only: no TensorFlow there."""
    check = ("import runpy, sys\n"
             f"for script in {sorted(map(str, STAGES.glob('*.py')))!r}:\n"
             "    runpy.run_path(script, run_name='watchdog_parent')\n"
             "print(*{m.split('.')[0] for m in sys.modules})")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "dcgan" in loaded
    assert not {"tensorflow", "keras", "numpy", "pydantic", "yaml", "mlflow"} & set(loaded)
