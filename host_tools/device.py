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
import time
from typing import Any, Callable

import serial

from host_tools.cli import CliError

BAUD = 115200
CHUNK = 512  # bytes per write command: larger saves round trips, the raw-paste window paces it
_RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
FIRST_ANSWER_S = 0.5  # a running board is at its raw REPL well within this after Ctrl-C, Ctrl-A
AGAIN_S = 1.0         # then they are sent again this often (a board that was restarting)
QUIET_S = 0.3         # without a soft reboot: the board is done answering late copies


class DeviceError(CliError):
    """Something about the device or the port; printed as one line."""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text.strip()


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
        try:
            self._enter_raw_repl()
        except DeviceError:
            self._abandon()
            raise

    def _enter_raw_repl(self) -> None:
        """Interrupt what runs, enter the raw REPL and (soft_reset) soft-reboot into it.

        mpremote's own enter_raw_repl sends Ctrl-C and Ctrl-A once. A board that is restarting
        loses them: the ESP32 empties its UART's receive FIFO when MicroPython starts
        (uart_stdout_init() in ports/esp32/uart.c, docs/twin.md), ~0.3 s after a reset, and the
        cabinet app then runs with nothing to stop it. So both are sent again until the raw
        REPL answers, within `timeout`. A late copy of them only makes the board print the
        prompt again before the soft reboot, which ends each copy's effect. A device that
        sends a stream of other data cannot hold this past the deadline."""
        ser = self.transport.serial
        timeout = ser.timeout  # mpremote's own reads rely on it: put back afterwards
        try:
            self._handshake(ser)
        except (OSError, serial.SerialException) as e:
            raise DeviceError("lost %s while connecting: %s" % (self.port, _last_line(str(e)) or "port closed")) \
                from None
        finally:
            ser.timeout = timeout
        self.transport.in_raw_repl = True

    def _handshake(self, ser: serial.Serial) -> None:
        seen = bytearray()
        deadline = time.monotonic() + self.timeout
        wait = FIRST_ANSWER_S
        while True:
            ser.write(b"\r\x03")  # Ctrl-C: interrupt a running program
            ser.write(b"\r\x01")  # Ctrl-A: the raw REPL
            if self._read_until(_RAW_PROMPT, min(deadline, time.monotonic() + wait), seen):
                break
            if time.monotonic() >= deadline:
                self._no_raw_repl(seen)
            wait = AGAIN_S
        deadline = time.monotonic() + self.timeout
        if self.soft_reset:
            ser.write(b"\x04")  # Ctrl-D at the raw prompt: soft reboot (boot.py runs, main.py not)
            if not self._read_until(b"soft reboot\r\n", deadline, seen):
                self._no_raw_repl(seen)
        else:  # no reboot to end the copies: wait for the board to fall quiet, then ask again
            self._read_until(None, deadline, seen, quiet=QUIET_S)
            ser.write(b"\x01")
        # The banner without its ">": mpremote's exec reads that as the prompt.
        if not self._read_until(_RAW_PROMPT[:-1], deadline, seen):
            self._no_raw_repl(seen)

    def _read_until(self, ending: bytes | None, until: float, seen: bytearray, quiet: float | None = None) -> bool:
        """Read into `seen` until it ends with `ending` (True), `until` passes or, with
        `quiet`, nothing came for that long (False)."""
        ser = self.transport.serial
        start = len(seen)
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= until or (quiet is not None and now - last >= quiet):
                return False
            ser.timeout = min(0.05, until - now)
            chunk = ser.read(1)  # a byte at a time: what follows `ending` stays for mpremote
            if chunk:
                seen += chunk
                last = time.monotonic()
                if ending and seen.endswith(ending) and len(seen) - start >= len(ending):
                    return True

    def _no_raw_repl(self, seen: bytearray) -> None:
        got = bytes(seen).strip(b"\r\n>")
        if got:
            shown = repr(got[:40]) + ("…" if len(got) > 40 else "")
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
