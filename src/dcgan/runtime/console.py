"""The stages' stderr without TensorFlow's start-up noise, and whether it reaches a terminal.

Importing TensorFlow writes C++ log lines to stderr before absl's logging is set up, so
TF_CPP_MIN_LOG_LEVEL (2, set in dcgan/__init__.py) cannot hold them back, and a user reads
`E`, `error` and `CUDA` in a run that is fine. `NoiseFilter` drops these lines, and only these:
- absl's `WARNING: All log messages before absl::InitializeLog() is called are written to
  STDERR`, and TFLite's `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`;
- port.cc's `oneDNN custom operations are on ...`;
- cpu_feature_guard.cc's `This TensorFlow binary is optimized to use available CPU
  instructions ...` and the `To enable the following instructions: ...` line right after it;
- the factory registrations a CUDA build of TensorFlow repeats on any machine: cuda_dnn.cc,
  cuda_fft.cc, cuda_blas.cc `Unable to register cuDNN/cuFFT/cuBLAS factory ...`, and
  computation_placer.cc `computation placer already registered ...`;
- node_def_util.cc's `NodeDef mentions attribute use_unbounded_threadpool which is not in
  the op definition ...` (an E line when a tf.data map first runs, which itself says that
  the attribute is ignored);
- on a machine with no NVIDIA device (no /dev/nvidiactl), the probes that find none:
  cudart_stub.cc `Could not find cuda drivers on your machine ...`, `failed call to cuInit`
  (cuda_platform.cc, cuda_driver.cc, cuda_executor.cc) and cuda_diagnostics.cc's account of
  the missing driver. Where a GPU is present these lines may say why it goes unused: kept.
A C++ log line counts only by its source file and message (`NOISE`), and never at level F.
Everything else passes unchanged and in order: other C++ log lines (an F line and its stack
trace, an E line from another file), Python tracebacks, the stages' own lines, and partial
writes such as a progress bar's `\\r` updates, passed on as they come.

Where the filter runs. A stage run as a program is a watchdog parent (dcgan.runtime.watchdog)
that runs `main()` in a child; the parent gives the child a pipe as its stderr and copies it
to its own stderr through the filter (`Relay`), in a thread of the parent. Not a thread in
the stage's own process (os.pipe + dup2 onto fd 2): the parent outlives the child, so it
passes on every byte the child wrote even when the child dies abruptly (TensorFlow's
CHECK failures: an F line, a stack trace, SIGABRT; the out-of-memory killer), and the
watchdog's own closing line comes after them. A thread in a dying process would lose what it
had not yet copied. The `dcgan` command runs its commands in its own process, so
`filtered_stderr` puts the same relay into a small helper process for it (this file run as a
script, standard library only), for the same reason. This module imports only the standard
library: the watchdog parent holds no more than before. It is not run by hand.

The child's stderr is then a pipe, not the terminal. `stderr_is_terminal` still says yes
when it leads to one: the relaying process names that pipe (device:inode) in
DCGAN_STDERR_TTY, so progress bars (dcgan.runtime.progress) draw on a terminal and print
plain lines in a log.

TensorFlow's logs back: `DCGAN_TF_LOGS=1` turns the filter off and leaves
TF_CPP_MIN_LOG_LEVEL at TensorFlow's own default (0: all its INFO and WARNING lines). A
TF_CPP_MIN_LOG_LEVEL the user sets is always kept; it does not turn the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

LOGS_ENV = "DCGAN_TF_LOGS"  # 1: TensorFlow's logs unfiltered, at its own default level
TTY_ENV = "DCGAN_STDERR_TTY"  # device:inode of a pipe that a relay copies to a terminal
PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Whole lines dropped as they are: absl's, and the TFLite interpreter's note when it picks
# its default CPU kernels (`dcgan export --format tflite` runs one for its parity check).
WHOLE_LINES = (PRE_INIT, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
CPU_GUARD_TAIL = "To enable the following instructions:"  # cpu_feature_guard's second line
# (source files, how the message starts, dropped only where no NVIDIA device is present)
NOISE = (
    (("port.cc",), "oneDNN custom operations are on", False),
    (("cpu_feature_guard.cc",), "This TensorFlow binary is optimized to use available CPU", False),
    (("cuda_dnn.cc",), "Unable to register cuDNN factory", False),
    (("cuda_fft.cc",), "Unable to register cuFFT factory", False),
    (("cuda_blas.cc",), "Unable to register cuBLAS factory", False),
    (("computation_placer.cc",), "computation placer already registered", False),
    # tf.data's, when a dataset is first run: "... This may be expected if your graph
    # generating binary is newer than this binary. Unknown attributes will be ignored."
    (("node_def_util.cc",), "NodeDef mentions attribute use_unbounded_threadpool which is "
     "not in the op definition", False),
    (("cudart_stub.cc",), "Could not find cuda drivers on your machine", True),
    (("cuda_platform.cc", "cuda_driver.cc", "cuda_executor.cc"), "failed call to cuInit", True),
    (("cuda_diagnostics.cc",), "", True),
)
# An absl/glog line: `I0000 00:00:1796194017.086239   22887 port.cc:153] message`. Its
# header token by token (a character, or a run of them), to match any beginning of one too.
_HEADER = (r"[IWEF]", *[r"\d"] * 4, " ", r"\d", r"\d", ":", r"\d", r"\d", ":", r"\d+",
           r"\.", r"\d+", " +", r"\d+", " ", r"(?:\S*/)?", r"[^/\s:\]]+", ":", r"\d+", r"\]", " ")
HEADER = re.compile(r"(?P<level>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ (?:\S*/)?"
                    r"(?P<source>[^/\s:\]]+):\d+\] (?P<message>.*)", re.DOTALL)
# How one starts, which is how one is found after a progress bar's unfinished line.
_LOG_START = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ ")
# Any beginning of such a header: a line still being written may become one.
_HEADER_START = re.compile(_HEADER[0] + "".join(f"(?:{t}" for t in _HEADER[1:])
                           + ")?" * (len(_HEADER) - 1))
_LONGEST = 4096  # no noise line is longer: a longer unfinished line is passed on


def wanted() -> bool:
    """Whether to filter: unless the user asked for TensorFlow's logs (DCGAN_TF_LOGS=1)."""
    return os.environ.get(LOGS_ENV, "") in ("", "0")


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA device (its driver's control node)."""
    return os.path.exists("/dev/nvidiactl")


class NoiseFilter:
    """Drops the noise lines from a byte stream fed in pieces; see the module docstring.

    A line is judged when it is complete. An unfinished one is held back only while it could
    still become a noise line (it starts like a C++ log line from a noise source, or like
    absl's warning); anything else, a progress bar's `\\r...` for one, is passed on at once,
    and so is the rest of its line.
    """

    def __init__(self, gpu: bool | None = None):
        gpu = gpu_present() if gpu is None else gpu
        self.rules = [(sources, start) for sources, start, no_gpu in NOISE if not (no_gpu and gpu)]
        self.sources = {s for sources, _ in self.rules for s in sources}
        self.held = b""  # the start of a line, until it can be judged
        self.passing = False  # part of the current line has been passed on: pass the rest
        self.after_guard = False  # the last line was cpu_feature_guard's first

    def feed(self, data: bytes) -> bytes:
        """The part of `data` (with what was held back) to pass on now."""
        data, self.held, out = self.held + data, b"", []
        while data:
            # A piece: up to a newline, or to a C++ log line written into an unfinished line
            # (after a progress bar's text), which starts a line of its own.
            end = data.find(b"\n") + 1 or len(data)
            log = _LOG_START.search(data, 0 if self.passing else 1, end)
            if log and log.start() == 0:  # passing: the line it was passing has ended
                self.passing = False
                continue
            piece, data = data[:log.start() if log else end], data[log.start() if log else end:]
            if self.passing or log:
                out.append(piece)
                self.passing = not (log or piece.endswith(b"\n"))
            elif piece.endswith(b"\n"):
                out += [] if self._noise(piece[:-1]) else [piece]
            elif self._undecided(piece):
                self.held = piece
            else:
                out.append(piece)
                self.passing = True
        return b"".join(out)

    def flush(self) -> bytes:
        """What is held back, at the end of the stream."""
        held, self.held = self.held, b""
        return held

    def _noise(self, line: bytes) -> bool:
        text = line.decode(errors="replace").rstrip("\r")
        after_guard, self.after_guard = self.after_guard, False
        if text in WHOLE_LINES or (after_guard and text.startswith(CPU_GUARD_TAIL)):
            return True
        m = HEADER.fullmatch(text)
        if m is None or m["level"] == "F":
            return False
        for sources, start in self.rules:
            if m["source"] in sources and m["message"].startswith(start):
                self.after_guard = m["source"] == "cpu_feature_guard.cc"
                return True
        return False

    def _undecided(self, tail: bytes) -> bool:
        if len(tail) > _LONGEST:
            return False
        text = tail.decode(errors="replace")
        if any(line.startswith(text) for line in WHOLE_LINES) or (self.after_guard and (
                CPU_GUARD_TAIL.startswith(text) or text.startswith(CPU_GUARD_TAIL))):
            return True
        m = HEADER.match(text)
        if m:
            return m["level"] != "F" and m["source"] in self.sources
        return _HEADER_START.fullmatch(text) is not None


def relay(source: int, sink: int, noise: NoiseFilter) -> None:
    """Copy fd `source` to fd `sink` through `noise` until end of file, then close `source`.
    A sink that fails (its reader gone) is skipped; `source` is still read to the end, so
    the writers never block on it."""
    while chunk := os.read(source, 1 << 16):
        _write(sink, noise.feed(chunk))
    _write(sink, noise.flush())
    os.close(source)


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:  # a terminal someone set non-blocking
            select.select([], [fd], [])
        except OSError:
            return


def _identity(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def stderr_is_terminal() -> bool:
    """Whether sys.stderr reaches a terminal: is one, or is a relay's pipe to one."""
    try:
        fd = sys.stderr.fileno()
        return os.isatty(fd) or os.environ.get(TTY_ENV) == _identity(fd)
    except (AttributeError, OSError, ValueError):  # replaced (pytest's capture) or closed
        return False


class Relay:
    """A pipe for a child's stderr, copied to this process's stderr through the filter by a
    thread: the watchdog parent's. `env` and `spawn_actions` are for `os.posix_spawn`; then
    `start`, and `finish` once the child has ended."""

    def __init__(self):
        self.read, self.write = os.pipe()
        self.thread = threading.Thread(target=relay, args=(self.read, 2, NoiseFilter()),
                                       name="dcgan-stderr", daemon=True)

    def env(self) -> dict[str, str]:
        return {TTY_ENV: _identity(self.write)} if stderr_is_terminal() else {}

    def spawn_actions(self) -> list[tuple]:
        return [(os.POSIX_SPAWN_DUP2, self.write, 2)]

    def start(self) -> None:
        os.close(self.write)  # the child holds it now: end of file when it exits
        self.thread.start()

    def finish(self, wait_s: float = 5.0) -> None:
        """Wait until all the child wrote is passed on; a grandchild that keeps the pipe
        open longer than `wait_s` loses what it writes later."""
        self.thread.join(wait_s)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within the block, this process's stderr (fd 2) goes through the filter, copied by a
    helper process that drains it even if this one dies; the block ends once all of it is
    passed on. A no-op with DCGAN_TF_LOGS=1."""
    sys.stderr.flush()
    try:
        real = os.dup(2) if wanted() else None
    except OSError:  # no stderr at all (`2>&-`): nothing to filter
        real = None
    if real is None:
        yield
        return
    terminal, before = stderr_is_terminal(), os.environ.get(TTY_ENV)
    read, write = os.pipe()
    helper = subprocess.Popen([sys.executable, "-I", "-S", __file__], stdin=read, stdout=real,
                              stderr=real)
    os.close(read)
    if terminal:
        os.environ[TTY_ENV] = _identity(write)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(real, 2)  # closes this process's write end: the helper reads to the end
        os.close(real)
        if before is None:
            os.environ.pop(TTY_ENV, None)
        else:
            os.environ[TTY_ENV] = before
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.wait(5.0)


if __name__ == "__main__":  # the helper of `filtered_stderr`: stdin through the filter to stdout
    # A terminal's Ctrl-C reaches the whole process group; the helper must outlive the
    # command to pass on its last words ("error: interrupted").
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay(0, 1, NoiseFilter())
