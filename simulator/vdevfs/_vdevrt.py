# Runtime of the virtual device, inside the MicroPython unix port: the link to the harness
# (simulator/vdev.py) that plays the cabinet's physical world, and the flash filesystem.
#
# Link protocol: JSON lines over a loopback TCP socket (port in $VDEV_CTL).
#   harness -> device: a full snapshot of the inputs on connect and after every change:
#     {"pins": {"4": 0, ...}, "adc": {"34": microvolts}, "temp_c": 21.0 | null,
#      "wifi": true, "ap": [ssid | null, password | null]}
#   device -> harness: {"hello": 1}, {"out": pin, "v": level}, {"reset": kind},
#     {"wdt": timeout_ms}, {"feed": 1}
import json
import micropython
import os
import select
import socket
import sys
import time

state = {"pins": {}, "adc": {}, "temp_c": None, "wifi": True, "ap": [None, None]}
_sock = None
_poll = None
_buf = b""
_irq_pins = {}  # pin number -> Pin with an irq handler
_pump_started = False


def _apply(line):
    global state
    try:
        new = json.loads(line)
    except ValueError:
        return
    old = state["pins"]
    state = new
    for num in _irq_pins:
        pin = _irq_pins[num]
        a, b = old.get(str(num)), new["pins"].get(str(num))
        if a is None or b is None or a == b:
            continue
        edge = pin.IRQ_RISING if b else pin.IRQ_FALLING
        if pin._trigger & edge and pin._handler:
            # As on the ESP32: the ISR only schedules the handler (ports/esp32/machine_pin.c,
            # machine_pin_isr_handler -> mp_sched_schedule), which then runs between bytecodes,
            # outside any task; when the queue is full the edge is lost.
            try:
                micropython.schedule(pin._handler, pin)
            except RuntimeError:
                pass


def drain():
    """Take in every world update waiting on the link (never blocks)."""
    global _buf
    if _sock is None:
        return
    while _poll.poll(0):
        try:
            chunk = _sock.recv(1024)
        except OSError:
            return
        if not chunk:
            return
        _buf += chunk
        while b"\n" in _buf:
            line, _buf = _buf.split(b"\n", 1)
            _apply(line)


def send(obj):
    if _sock is None:
        return
    data = (json.dumps(obj) + "\n").encode()
    while data:
        try:
            n = _sock.send(data)
        except OSError:
            time.sleep_ms(1)
            continue
        data = data[n:]


async def _pump():
    # Plays the interrupt controller: waits for world changes and fires pin handlers.
    import asyncio
    reader = asyncio.StreamReader(_sock)
    global _buf
    while True:
        chunk = await reader.read(1024)
        if chunk:
            _buf += chunk
            while b"\n" in _buf:
                line, _buf = _buf.split(b"\n", 1)
                _apply(line)
        drain()
        if chunk == b"":
            return


def watch(pin):
    """A pin got an irq handler: make sure world changes reach it while asyncio runs."""
    global _pump_started
    if pin._handler is None:
        _irq_pins.pop(pin.id, None)
        return
    _irq_pins[pin.id] = pin
    if not _pump_started and _sock is not None:
        try:
            import asyncio
            asyncio.create_task(_pump())
            _pump_started = True
        except Exception:
            pass


def halt(kind, **extra):
    """A reset: tell the harness, then stop like a board whose CPU restarts."""
    extra["reset"] = kind
    send(extra)
    while True:  # the harness ends this process; input typed meanwhile waits for the next one
        try:
            time.sleep_ms(1000)
        except KeyboardInterrupt:
            pass


def _connect():
    global _sock, _poll, _buf
    port = os.getenv("VDEV_CTL")
    if not port:
        return
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", int(port))[0][-1])
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise OSError("vdev: harness closed the link")
        line += c
    _apply(line)
    s.setblocking(False)
    _sock = s
    _poll = select.poll()
    _poll.register(s, select.POLLIN)


def boot(main_globals):
    """Connect to the harness, load the hardware modules, mount the flash directory as "/",
    then run boot.py and (unless the harness says this is a raw-REPL soft reboot) main.py."""
    _connect()
    import machine, network, onewire, ds18x20, esp32  # noqa: F401 -- before the host fs goes
    import vfs
    from _vdevflash import FlashFS
    flash = FlashFS(os.getenv("VDEV_FLASH"), int(os.getenv("VDEV_FLASH_SIZE") or 2097152))
    vfs.umount("/")
    vfs.mount(flash, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    for k in list(main_globals):
        if k not in ("__name__",):
            del main_globals[k]
    send({"hello": 1})  # from here on host input may arrive: Ctrl-C interrupts boot.py/main.py
    ok = _run("boot.py", main_globals)
    if ok and os.getenv("VDEV_RUN_MAIN") == "1":
        _run("main.py", main_globals)
    # Marks the end of the boot scripts for the harness (stripped from what the host sees).
    while True:
        try:
            sys.stdout.write("\x00vdev:ready\x00")
            break
        except KeyboardInterrupt:
            pass


def _run(name, g):
    try:
        os.stat(name)
    except OSError:
        return True
    try:
        with open(name) as f:
            src = f.read()
        exec(compile(src, name, "exec"), g)
        return True
    except SystemExit:
        return False
    except BaseException as e:  # KeyboardInterrupt too: a board prints it and goes on
        sys.print_exception(e)
        return False
