"""The command-line contract, as test helpers: bad input or a failure gives exactly one ``error: ...``
line on stderr, exit status 2 (130 on Ctrl-C), no traceback; and files the user had are unchanged.

``run`` drives a command in a subprocess (signals, tracebacks, real exits); ``run_in_process`` calls
``common_blocks.cli.main`` directly, which is cheaper where no process boundary matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common_blocks.cli import main

# The installed console script (make installs the project into the venv in editable mode).
SEVERSTAL = str(Path(sys.executable).with_name("severstal"))


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def __iter__(self):
        """``code, stdout, stderr = run_in_process(...)``."""
        return iter((self.code, self.stdout, self.stderr))


def as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test interrupts: Ctrl-C delivered as in a terminal.

    A shell's background job (CI may run the suite as one) inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler in its children; a user's terminal always delivers it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(*args: object, cwd: Path | None = None, timeout: float = 300) -> Outcome:
    """``severstal ARGS`` in a subprocess."""
    result = subprocess.run(
        [SEVERSTAL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )
    return Outcome(result.returncode, result.stdout, result.stderr)


def run_in_process(*args: object) -> Outcome:
    """``common_blocks.cli.main(ARGS)`` with stdout and stderr captured; an exception propagates."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_one_error_line(outcome: Outcome, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, and the last stderr line is the only ``error:`` line and holds
    every fragment; returns that line. (Warnings before it are allowed, other error lines are not.)"""
    lines = [line for line in outcome.stderr.strip().splitlines() if line.strip()]
    assert outcome.code == code, f"exit {outcome.code}, stderr:\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file below ``roots``, to compare before and after a command."""
    files = [path for root in roots for path in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


def assert_unchanged(before: dict[Path, str], *roots: Path) -> None:
    """Every file of ``before`` is still there, byte-identical (new files may have appeared)."""
    after = snapshot(*roots)
    changed = sorted(str(path) for path, digest in before.items() if after.get(path) != digest)
    assert not changed, f"changed or removed: {changed}"
