"""The stage watchdog: a small parent process that runs a stage and says how it ended.

`stage.stage_main` starts it when a stage script runs as a program (`python
stages/train.py ...`, as dvc.yaml runs it). The parent runs the same command line again as
a child with DCGAN_STAGE_CHILD=1 set, forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to it,
and waits, passing the child's stderr on without TensorFlow's start-up noise
(dcgan.runtime.console). A child that exits has reported its own errors (one line, see
`stage_main`); a child the kernel kills, most often the out-of-memory killer with SIGKILL,
cannot, so the parent prints the one line: the signal, the child's peak memory and what to
lower.

Only the standard library is imported here (and by dcgan.runtime.console), so the parent holds
about 13 MB while the stage runs. Not run on its own.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dcgan.runtime import console

CHILD_ENV = "DCGAN_STAGE_CHILD"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80  # si_code of a signal the kernel sent, such as a terminal's Ctrl-C
# What to lower when a stage runs out of memory, by stage name.
ADVICE = {
    "fetch": "fetch a smaller fetch.dataset or fewer images in fetch.folder",
    "preprocess": "use fewer images or a smaller preprocess.image_size",
    "classifier": "lower classifier.batch_size",
    "train": "lower train.batch_size or preprocess.image_size",
    "generate": "lower generate.num_samples",
    "evaluate": "lower generate.num_samples or evaluate.batch_size",
    "probe": "use smaller probe.train_sizes",
}
# Fatal signals a user or a supervisor sends; any other one is a crash.
_STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def stage_name() -> str:
    """The running stage's name: the stem of the script, `train` for stages/train.py."""
    return Path(sys.argv[0]).stem or "?"


def advice(stage: str) -> str:
    """What to change when `stage` runs out of memory, as the end of an error line."""
    what = ADVICE.get(stage, "lower the batch and image sizes in params.yaml")
    return f"{what}, or free memory, then rerun"


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def _peak(usage: resource.struct_rusage) -> str:
    """`usage.ru_maxrss` in GB: kibibytes on Linux, bytes on macOS."""
    return _gb(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def _cgroup_files(v2: str, v1: str) -> Iterator[Path]:
    """The cgroup file `v2` (cgroup v2) or `v1` (v1 memory controller) of this process's
    cgroup, then at the mount's top (a container's own cgroup)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            yield Path(f"/sys/fs/cgroup{path}") / v2
        elif "memory" in controllers.split(","):
            yield Path(f"/sys/fs/cgroup/memory{path}") / v1
    yield Path("/sys/fs/cgroup") / v2
    yield Path("/sys/fs/cgroup/memory") / v1


def memory_total() -> str:
    """The memory this process may use, for an error line: `16.0 GB on this machine`, or a
    cgroup's (a container's) lower limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _cgroup_files("memory.max", "memory.limit_in_bytes"):
        try:
            limit = int(path.read_text())  # "max" when there is none (v2)
        except (OSError, ValueError):
            continue
        if limit < total:
            return f"{_gb(limit)} allowed to this cgroup"
        break
    return f"{_gb(total)} on this machine"


def oom_kills() -> int | None:
    """The kills by the out-of-memory killer counted in this process's cgroup (None if
    unknown): cgroup v2's memory.events, v1's memory.oom_control."""
    for path in _cgroup_files("memory.events", "memory.oom_control"):
        try:
            counters = dict(line.split() for line in path.read_text().splitlines())
            return int(counters["oom_kill"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def out_of_memory_line() -> str:
    """The error line for a MemoryError raised in this process."""
    stage = stage_name()
    peak = _peak(resource.getrusage(resource.RUSAGE_SELF))
    return f"out of memory in stage {stage} (peak {peak} of {memory_total()}); {advice(stage)}"


def device_oom_line(err: BaseException) -> str | None:
    """The error line for TensorFlow's out-of-memory error on an accelerator (matched by
    name: importing TensorFlow to check would cost seconds), else None."""
    if "ResourceExhaustedError" not in {cls.__name__ for cls in type(err).__mro__}:
        return None
    stage = stage_name()
    return (f"out of accelerator memory in stage {stage} (ResourceExhaustedError); "
            f"{advice(stage)}")


def killed_line(stage: str, signum: int, usage: resource.struct_rusage,
                oom_killed: bool) -> tuple[str, int]:
    """The error line and exit status for a child stage that signal `signum` ended."""
    if signum == signal.SIGINT:
        return "interrupted", 130
    name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
    peak = f"{_peak(usage)} peak memory of {memory_total()}"
    if signum == signal.SIGKILL:
        if oom_killed:
            return (f"stage {stage} was killed (SIGKILL) by the kernel's out-of-memory killer "
                    f"at {peak}; {advice(stage)}"), 2
        return (f"stage {stage} was killed (SIGKILL) at {peak}: most likely the kernel's "
                f"out-of-memory killer; {advice(stage)}"), 2
    if signum in _STOPS:
        return f"stage {stage} was stopped by {name}", 128 + signum
    return (f"stage {stage} crashed with {name} at {peak}; the output above may say "
            "why"), 128 + signum


def run_watched() -> int:
    """Run this process's command line again as a child (DCGAN_STAGE_CHILD=1, same stdin,
    stdout and stderr), forward stop signals to it, and report a death by signal.

    Returns:
        The child's exit status; for a death by signal, after printing one `error:` line,
        2 for SIGKILL (the out-of-memory killer's), 130 for SIGINT, else 128 + signal.
    """
    # An inherited SIG_IGN would have the kernel reap the child before wait4 sees it.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    watched = {*FORWARDED, signal.SIGCHLD}
    # Blocked before the spawn: no signal is lost or handled by Python meanwhile; the child
    # gets the mask this process started with.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    # The child's stderr comes through this process, without TensorFlow's start-up noise
    # (dcgan.runtime.console says why here); its thread inherits the blocked mask.
    relay = console.Relay() if console.wanted() else None
    try:
        oom_before = oom_kills()
        env = {k: v for k, v in os.environ.items() if k != console.TTY_ENV}
        # orig_argv keeps interpreter options (-X importtime, -u) that argv drops.
        pid = os.posix_spawn(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                             {**env, CHILD_ENV: "1", **(relay.env() if relay else {})},
                             setsigmask=mask, file_actions=relay.spawn_actions() if relay else ())
        if relay:
            relay.start()
        status, usage = _wait(pid, watched)
        if relay:
            relay.finish()  # all the child wrote, before this process's own line
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    oom_after = oom_kills()
    oom_killed = None not in (oom_before, oom_after) and oom_after > oom_before
    line, code = killed_line(stage_name(), os.WTERMSIG(status), usage, oom_killed)
    print(f"error: {line}", file=sys.stderr, flush=True)
    return code


def _wait(pid: int, watched: set[int]) -> tuple[int, resource.struct_rusage]:
    """Forward signals to child `pid` until it ends; its wait status and resource usage."""
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo == signal.SIGCHLD:
            done, status, usage = os.wait4(pid, os.WNOHANG)  # 0 while it is only stopped
            if done:
                return status, usage
        # A terminal's Ctrl-C reaches the child's process group (ours) already; a second
        # one would interrupt the child's own clean-up.
        elif info.si_code != _SI_KERNEL:
            os.kill(pid, info.si_signo)


def die_with_parent(poll_s: float = 0.5) -> None:
    """In the watched child: SIGKILL this process within `poll_s` seconds of the watchdog
    parent's death, so that `kill -9` of the stage's pid leaves no stage running.

    A polling thread, not prctl's PR_SET_PDEATHSIG: killing both processes one after the
    other (tests/dvc_repo.py does) would then often find this one already a zombie.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="dcgan-watchdog", daemon=True).start()
