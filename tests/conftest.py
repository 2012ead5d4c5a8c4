import os
import signal
import sys

# Imported up front: hypothesis' pytest plugin would otherwise import it lazily at the end of
# the session, while simulator threads may still be winding down; CPython 3.11's AST compiler is
# not thread-safe in its recursion bookkeeping there ("AST constructor recursion depth mismatch").
import hypothesis  # noqa: F401
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
sys.path.insert(0, str(FIRMWARE))
sys.path.insert(0, str(ROOT / "tests" / "firmware"))

pytest_plugins = ["tests.fixtures"]

# Tests stop the CLIs they start (registry ingest, console) with SIGINT, as a user's Ctrl-C does.
# A shell's background job (`make test &`, nohup) starts with SIGINT ignored, every child would
# inherit that, and a Python child then never sees KeyboardInterrupt: those tests failed on
# their timeouts. A handler here (not inherited across exec) gives each child the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_terminal_summary(terminalreporter):
    # Say how many firmware tests ran under each runtime (issue: make test prints it).
    stats = terminalreporter.stats
    cpy = mpy = 0
    for rep in stats.get("passed", []) + stats.get("failed", []):
        if rep.when != "call":
            continue
        if "test_firmware_on_micropython" in rep.nodeid:
            mpy += 1
        elif "tests/firmware/" in rep.nodeid:
            cpy += 1
    terminalreporter.write_line(
        "firmware unit tests: %d under CPython, %d under the MicroPython unix port" % (cpy, mpy))


# Honest green (issue 11 point 9): nothing in this suite may be skipped. A skip (pytest.skip,
# importorskip, a skip marker) is reported as a failure saying what was missing; `make test`
# installs the tools, and a limit it cannot raise must show as red, not as a quiet skip.
import pytest as _pytest  # noqa: E402


@_pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = "skipped, which this suite counts as a failure: %s" % reason
