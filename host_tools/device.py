"""A MicroPython device on a serial port: connect, run code, read/write/checksum files, reset.

Built on mpremote's Python transport (`mpremote.transport_serial.SerialTransport`) rather than
on the `mpremote` command line: one connection (one soft reset) serves a whole provisioning run
instead of one per file, device-side exceptions arrive as exceptions instead of text on stderr,
and a stuck connection can be bounded by a deadline. mpremote documents that API as still
settling, so everything that touches it is in this one module (pyproject pins mpremote>=1.29).

Every failure becomes a `DeviceError`: one line that says what is wrong and what to try —
no such port, port busy, no answer, not MicroPython, flash full, device error.
"""
from __future__ import annotations

import ast
import base64
import contextlib
import errno
import io
import os
import threading
import time
from typing import Any, Callable

import serial

from host_tools.cli import CliError

BAUD = 115200
CHUNK = 512  # bytes per write command: larger saves round trips, the raw-paste window paces it


class DeviceError(CliError):
    """Something about the device or the port; printed as one line."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text.strip()


def _received(printed: str) -> bytes:
    """What the device sent during a failed handshake: mpremote prints it as bytes reprs."""
    got = b""
    for line in printed.splitlines():
        try:
            value = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            value = line.encode()
        got += value if isinstance(value, bytes) else str(value).encode()
    return got


def _diagnose_open(port: str) -> DeviceError:
    """Why a port did not open, as a one-line error."""
    if not os.path.exists(port):
        return DeviceError("no such port %s: check the cable and the name (ls /dev/ttyUSB* /dev/ttyACM*)" % port)
    try:
        s = serial.Serial(port, BAUD, exclusive=True)
        s.close()
    except serial.SerialException as e:
        msg = str(e)
        if "exclusively lock" in msg or "busy" in msg.lower() or getattr(e, "errno", None) == errno.EBUSY:
            return DeviceError("port %s is busy: another program (a console, mpremote, a serial monitor) "
                               "has it open; close it and try again" % port)
        if getattr(e, "errno", None) == errno.EACCES or "Permission denied" in msg:
            return DeviceError("no permission to open %s: add yourself to the 'dialout' group" % port)
        return DeviceError("cannot open %s: %s" % (port, _last_line(msg)))
    except OSError as e:
        return DeviceError("cannot open %s: %s" % (port, e.strerror or e))
    return DeviceError("cannot open %s" % port)


class Device:
    """One connection to a MicroPython board. Use as a context manager:

        with Device("/dev/ttyUSB0") as dev:
            print(dev.eval("1+1"))
    """

    def __init__(self, port: str, timeout: float = 10.0, soft_reset: bool = True,
                 full_hint: str = "remove files (mpremote rm) or use --mpy to ship smaller files") -> None:
        self.port = port
        self.full_hint = full_hint  # what to do when the flash is full: the caller knows what it sent
        self.timeout = timeout
        self.soft_reset = soft_reset
        self.transport = None
        self.bytes_written = 0  # file bytes copied
        self.wire_bytes = 0     # characters of code sent to copy them

    # -- connection --------------------------------------------------------------------------
    def __enter__(self) -> "Device":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        if not os.path.exists(self.port):
            raise _diagnose_open(self.port)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.transport = SerialTransport(self.port, baudrate=BAUD, timeout=1)
        except TransportError:
            raise _diagnose_open(self.port) from None
        # mpremote waits for its prompt; a device that keeps sending other data could hold it
        # forever, so the handshake runs under a deadline of our own.
        result: dict[str, Any] = {}
        seen = io.StringIO()

        def handshake() -> None:
            try:
                with contextlib.redirect_stdout(seen):
                    self.transport.enter_raw_repl(soft_reset=self.soft_reset, timeout_overall=self.timeout)
                result["ok"] = True
            except Exception as e:  # TransportError, serial errors, a closed port
                result["error"] = e

        t = threading.Thread(target=handshake, daemon=True)
        t.start()
        t.join(self.timeout * 2 + 5)
        if t.is_alive() or "ok" not in result:
            answered = _received(seen.getvalue()) or (t.is_alive() and b"(a stream of data)")
            self._abandon()
            if answered:
                shown = repr(answered[:40]) + ("…" if len(answered) > 40 else "")
                raise DeviceError("%s answers, but not as MicroPython (no raw REPL prompt; got %s): "
                                  "wrong port, or other firmware on the board?" % (self.port, shown))
            raise DeviceError("no answer from %s within %gs: is the board powered and running "
                              "MicroPython? press its reset button and try again" % (self.port, self.timeout))

    def _abandon(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.serial.close()
            self.transport = None

    def close(self) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(Exception):
            if self.transport.in_raw_repl:
                self.transport.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.transport.close()
        self.transport = None

    # -- code ----------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, what: str = "", quiet: bool = True) -> Any:
        from mpremote.transport import TransportError, TransportExecError
        if self.transport is None:
            raise DeviceError("not connected to %s" % self.port)
        try:
            if not quiet:
                return fn(*args)
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints on some failures
                return fn(*args)
        except TransportExecError as e:
            text = e.error_output
            if "ENOSPC" in text or "Errno 28" in text or "OSError: 28" in text:
                raise DeviceError("the device's flash is full%s: %s"
                                  % (" writing " + what if what else "", self.full_hint)) from None
            raise DeviceError("device error%s: %s" % (" (" + what + ")" if what else "", _last_line(text))) from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DeviceError("the device's flash is full%s: %s"
                                  % (" writing " + what if what else "", self.full_hint)) from None
            raise DeviceError("lost the connection to %s: %s" % (self.port, e.strerror or e)) from None
        except (TransportError, serial.SerialException) as e:
            raise DeviceError("lost the device on %s (%s): check the cable and try again"
                              % (self.port, _last_line(str(e)) or "timeout")) from None

    def exec(self, code: str, what: str = "") -> str:
        """Run code on the device; its printed output (text)."""
        out = self._call(self.transport.exec, code, what=what)
        return out.decode("utf-8", "replace")

    def exec_lines(self, code: str, on_line: Callable[[str], None], timeout: float = 30.0) -> None:
        """Run code, handing each printed line to on_line as it arrives (long checks)."""
        buf = bytearray()

        def consume(b: bytes) -> None:
            buf.extend(b.replace(b"\x04", b""))
            while b"\n" in buf:
                i = buf.index(b"\n")
                line = bytes(buf[:i]).decode("utf-8", "replace").rstrip("\r")
                del buf[:i + 1]
                on_line(line)

        from mpremote.transport import TransportExecError
        _, err = self._call(self.transport.exec_raw, code, timeout, consume, quiet=False)
        if buf:
            on_line(bytes(buf).decode("utf-8", "replace"))
        if err:
            self._call(self._raise, TransportExecError(b"", err.decode("utf-8", "replace")))

    @staticmethod
    def _raise(e: Exception) -> None:
        raise e

    def eval(self, expr: str, what: str = "") -> Any:
        """A Python literal computed on the device."""
        out = self.exec("print(repr(%s))" % expr, what=what).strip()
        try:
            return ast.literal_eval(out)
        except (ValueError, SyntaxError):
            raise DeviceError("unexpected answer from the device: %r" % out[:80]) from None

    # -- files ---------------------------------------------------------------------------------
    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        if self.eval_code("import os\ntry:\n print(os.stat(%r)[6])\nexcept OSError:\n print(None)" % path) is None:
            return None
        data = bytearray()
        self.exec("f=open(%r,'rb')\nr=f.read" % path, what=path)
        while True:
            chunk = self.eval("r(%d)" % CHUNK, what=path)
            if not chunk:
                break
            data += chunk
        self.exec("f.close()")
        return bytes(data)

    def write_file(self, path: str, data: bytes, progress: Callable[[int, int], None] | None = None) -> None:
        """Replace `path` atomically: write `path.tmp`, then rename it over the old file, so a
        cut cable leaves the old file or the new one, never half of one."""
        tmp = path + ".tmp"
        try:
            self.exec("f=open(%r,'wb')\nw=f.write\nfrom binascii import a2b_base64 as a2b" % tmp, what=path)
            done = 0
            for i in range(0, len(data), CHUNK):
                chunk = data[i:i + CHUNK]
                # A bytes literal costs ~1 character a byte for text but 4 for binary (.mpy):
                # send whichever of it and base64 is shorter over the wire.
                code = "w(%r)" % chunk
                b64 = "w(a2b(%r))" % base64.b64encode(chunk)
                code = b64 if len(b64) < len(code) else code
                self.exec(code, what=path)
                done += len(chunk)
                self.bytes_written += len(chunk)
                self.wire_bytes += len(code)
                if progress:
                    progress(done, len(data))
            self.exec("f.close()\nimport os\nos.rename(%r,%r)" % (tmp, path), what=path)
        except DeviceError:
            with contextlib.suppress(DeviceError):  # free the space the partial file took
                self.exec("try:\n f.close()\nexcept Exception:\n pass\ntry:\n import os\n os.remove(%r)\n"
                          "except OSError:\n pass" % tmp)
            raise

    def remove(self, path: str) -> None:
        self.exec("import os\ntry:\n os.remove(%r)\nexcept OSError:\n pass" % path)

    def makedirs(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            self.exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % d)

    def sha256(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file, computed on the device; None for a missing file."""
        code = ("import hashlib,binascii\n"
                "def _h(p):\n"
                " try:\n  f=open(p,'rb')\n except OSError:\n  return None\n"
                " h=hashlib.sha256();b=bytearray(512);m=memoryview(b)\n"
                " while True:\n  n=f.readinto(b)\n  if not n:\n   break\n  h.update(m[:n])\n"
                " f.close()\n return binascii.hexlify(h.digest()).decode()\n"
                "print(repr({p:_h(p) for p in %r}))\n" % list(paths))
        return self.eval_code(code)

    def eval_code(self, code: str) -> Any:
        out = self.exec(code).strip()
        try:
            return ast.literal_eval(out.splitlines()[-1])
        except (ValueError, SyntaxError, IndexError):
            raise DeviceError("unexpected answer from the device: %r" % out[:80]) from None

    # -- reset ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Hard reset (machine.reset()): boot.py and main.py run, the cabinet app starts."""
        self._call(self.transport.exec_raw_no_follow, "import time,machine\ntime.sleep_ms(50)\nmachine.reset()")
        time.sleep(0.1)
        self.transport.in_raw_repl = False
        with contextlib.suppress(Exception):
            self.transport.close()
        self.transport = None
