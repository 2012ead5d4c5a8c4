# Runtime of the virtual device, inside the MicroPython unix port: the link to the harness
# (simulator/vdev/device.py) that plays the cabinet's physical world, and the flash filesystem.
#
# Link protocol: JSON lines over a loopback TCP socket (port in $VDEV_CTL).
#   harness -> device: a full snapshot of the inputs on connect and after every change:
#     {"pins": {"4": 0, ...}, "adc": {"34": microvolts}, "temp_c": 21.0 | null,
#      "wifi": true, "ap": [ssid | null, password | null]}
#     {"ack": 1}: the end-of-boot marker was seen (boot())
#   device -> harness: {"hello": 1}, {"out": pin, "v": level}, {"reset": kind},
#     {"wdt": timeout_ms}, {"feed": 1}, {"rtc": [host_s, device_s]} (the clock was set)
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
flash = None        # the block device under "/" (shims/_vdevflash.py), with its counters


def _apply(line):
    global state
    try:
        new = json.loads(line)
    except ValueError:
        return
    if "ack" in new:  # the harness holds host input until the REPL is up (boot())
        _acked[0] = True
        return
    old = state["pins"]
    state = new
    if flash is not None:
        _flash_fault(new.get("flash_full"))
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


def _flash_fault(full):
    """World fault "flash": "full": something fills the filesystem until littlefs says ENOSPC
    (the filler stays on flash, across resets, until "flash": "ok")."""
    import _vdevflash
    try:
        os.stat(_vdevflash.FILLER + "4096")
        filled = True
    except OSError:
        filled = False
    if full and not filled:
        _vdevflash.fill()
    elif filled and not full:
        _vdevflash.unfill()


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


def sntp_addr(host):
    """Where `ntptime` sends its request for `host`: the harness's SNTP responder on loopback,
    whatever the name (the harness answers for any NTP host a cabinet is configured with)."""
    port = os.getenv("VDEV_SNTP")
    if not port or not host:
        raise OSError(-202)  # as lwIP's EAI_FAIL from the ESP32's getaddrinfo
    return socket.getaddrinfo("127.0.0.1", int(port))[0][-1]


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
    # Before the host fs goes. ntptime is frozen into the ESP32's firmware; here it is loaded now.
    import machine, network, onewire, ds18x20, esp32, ntptime  # noqa: F401
    import vfs
    import _vdevflash
    global flash
    blocks = int(os.getenv("VDEV_FLASH_SIZE") or 2097152) // _vdevflash.BLOCK_SIZE
    flash = _vdevflash.BlockDevice(os.getenv("VDEV_FLASH"), blocks)
    flash.on_interrupt = lambda: send({"intr": 1})
    vfs.umount("/")
    _vdevflash.mount(flash, "/")
    _flash_fault(state.get("flash_full"))
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    for k in list(main_globals):
        if k not in ("__name__",):
            del main_globals[k]
    _scripts(main_globals, os.getenv("VDEV_RUN_MAIN") == "1")


_ran = []        # the scripts started so far, in order ("boot.py", "main.py")
_ok = [True]     # boot.py ended without an exception (else main.c skips main.py)


def _scripts(g, run_main):
    """boot.py, then main.py, as ports/esp32/main.c runs them. Host bytes flow from the hello
    on, so a Ctrl-C can also land in the few lines between the scripts: it is kept and
    interrupts the next script at its first line, never the runtime itself (which would leave
    the REPL without its end-of-boot marker)."""
    intr = hello = marked = False
    while True:
        try:
            if not hello:
                hello = True  # (the harness sends nothing before it has the whole line)
                send({"hello": 1})  # from here on host input may arrive: Ctrl-C interrupts
            if not _ran:
                _run("boot.py", g, intr)
            elif len(_ran) == 1 and _ok[0] and run_main:
                _run("main.py", g, intr)
            else:
                # The end of the boot scripts, for the harness (stripped from what the host
                # sees; a second one, after a Ctrl-C right here, too). The harness then holds
                # host input until the REPL has its prompt up, and answers {"ack": 1}: a
                # Ctrl-C after this function would meet no handler (the unix port restores
                # SIGINT's default once a script ends) and kill the interpreter, where a
                # board's UART just keeps the byte.
                if not marked:
                    sys.stdout.write("\x00vdev:ready\x00")
                    marked = True
                _await_ack()
                return
            intr = False
        except KeyboardInterrupt:
            intr = True


def _await_ack():
    if _sock is None:
        return
    # The harness acks as soon as it reads the marker; the deadline only covers a dead harness.
    # It was 2 s: a harness that slow (a loaded machine) let the runtime leave with host input
    # still flowing, and a Ctrl-C then met SIGINT's default action and killed the unix port.
    deadline = time.ticks_add(time.ticks_ms(), 15000)
    while not _acked[0] and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        try:
            _poll.poll(20)
            drain()
        except KeyboardInterrupt:
            pass


_acked = [False]


def _run(name, g, intr=False):
    try:
        _ran.append(name)
        try:
            os.stat(name)
        except OSError:
            return
        if intr:
            raise KeyboardInterrupt
        with open(name) as f:
            src = f.read()
        exec(compile(src, name, "exec"), g)
    except SystemExit:
        _ok[0] = False
    except BaseException as e:  # KeyboardInterrupt too: a board prints it and goes on
        _ok[0] = False
        sys.print_exception(e)
