"""Time a whole command and append the figure to benchmarks/results.jsonl, the record the
docs render (scripts/render_docs.py): the pipeline's and the test suite's wall time.

Usage, from the repo root with .venv active:
    python -m benchmarks.timed pipeline -- bash scripts/pipeline.sh
    python -m benchmarks.timed test_suite -- bash scripts/test.sh
    python -m benchmarks.timed setup --size .venv -- bash scripts/setup.sh   (in a fresh clone)
The record holds the name, the command, the wall seconds, the exit status, the command's
last output line (pytest's "N passed in ..."), with --size the disk use of a path after
it (size_mb, as `du -sm`), and the machine, versions and git commit.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.records import append_result, machine

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks/results.jsonl"


def main(argv: list[str]) -> int:
    """Run the command after `--`, echoing its output; record it; return its exit status."""
    size = None
    if len(argv) > 2 and argv[1] == "--size":
        size, argv = Path(argv[2]), [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m benchmarks.timed NAME [--size PATH] -- COMMAND...", file=sys.stderr)
        return 2
    start = time.monotonic()
    proc = subprocess.Popen(argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        last = line.strip() or last
    code = proc.wait()
    record = {"benchmark": argv[0], "command": " ".join(argv[2:]),
              "seconds": round(time.monotonic() - start, 1), "exit_status": code,
              "summary": last.strip("= "), **machine()}
    if size is not None:
        record["size_mb"] = round(sum(f.stat().st_size for f in size.rglob("*")
                                      if f.is_file() and not f.is_symlink()) / 2**20)
    append_result(record, RESULTS)
    print(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
