"""docs/broker.md, followed literally (issue 13 §2 point 4): its shell blocks run in order, as
written, with only these changes — /etc/mosquitto, /var/lib/mosquitto and $HOME moved into a
temporary directory, `sudo ` dropped, the apt-get line left out (the tools are required
instead), mosquitto_passwd's prompts answered, and `systemctl restart/reload mosquitto` replaced
by starting Mosquitto with the resulting main file (its listeners moved to free loopback ports)
or sending it SIGHUP. Then a cabinet connects with the firmware's own MQTT client over TLS,
verifying the broker with the CA the doc made, and logs in with the password `add-device`
printed; the registry account reads what it publishes.

Run as root (as the doc's `sudo` steps are), the files keep the owners the doc gives them and
Mosquitto drops to the `mosquitto` user, so the ownership steps are tested too."""
import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aedgate.mqtt import MQTTClient
from tests.fixtures import ROOT, free_port, require_tool
from tests.integration.test_broker_acl import Client

DOC = ROOT / "docs" / "broker.md"
HOW = "install the Debian packages mosquitto, mosquitto-clients and openssl (`make test` does)"
SERVICE_PASSWORDS = {"dispatch": "pw-dispatch", "registry": "pw-registry", "monitor": "pw-monitor",
                     "update": "pw-update"}


def shell_blocks(text, until="## Rotate or revoke"):
    """The ```sh blocks before the section `until`, as lists of logical lines."""
    text = text[:text.index(until)]
    blocks = []
    for body in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines, cur = [], ""
        for raw in body.splitlines():
            cur += raw
            if cur.endswith("\\"):
                cur = cur[:-1] + " "
                continue
            if cur.strip():
                lines.append(cur.strip())
            cur = ""
        blocks.append(lines)
    return blocks


class DocBroker:
    def __init__(self, root, conf):
        self.root, self.conf_src = root, conf
        self.ports = {}
        self.proc = None

    def start(self):
        out = []
        for line in self.conf_src.read_text().splitlines():
            words = line.split()
            if words and words[0] == "listener":
                self.ports[int(words[1])] = free_port()
                line = "listener %d 127.0.0.1" % self.ports[int(words[1])]
            elif words and words[0] in ("persistence_location", "password_file", "acl_file",
                                        "cafile", "certfile", "keyfile"):
                line = "%s %s" % (words[0], relocate(" ".join(words[1:]), self.root))
            out.append(line)
        conf = self.root / "run.conf"
        conf.write_text("\n".join(out) + "\n")
        conf.chmod(0o644)
        self.log = open(self.root / "mosquitto.out", "ab")
        self.proc = subprocess.Popen([require_tool("mosquitto", HOW), "-c", str(conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            assert self.proc.poll() is None, "mosquitto exited %s: %s" % (self.proc.returncode,
                                                                          self.text())
            try:
                socket.create_connection(("127.0.0.1", self.ports[1883]), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen: %s" % self.text())

    def hup(self):
        n = self.text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while self.text().count("Reloading config") <= n:
            assert time.time() < deadline, self.text()
            time.sleep(0.05)
        time.sleep(0.2)

    def text(self):
        return (self.root / "mosquitto.out").read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def relocate(text, root):
    for real in ("/etc/mosquitto", "/var/lib/mosquitto"):
        text = text.replace(real, str(root) + real)
    return text


@pytest.fixture
def root():
    # World-traversable (pytest's own tmp dirs are 0700): Mosquitto, started as root, drops to
    # the `mosquitto` user and must reach the files the doc gave to that user.
    d = Path(tempfile.mkdtemp(prefix="aedgate-brokerdoc-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def follow_broker_md(root, edit=lambda line: line):
    """Run docs/broker.md's steps into `root` as the module docstring says; `edit` may change a
    line the doc leaves to the reader (the broker's host name). Returns the running broker and
    each step's (lines, stdout); the caller stops the broker."""
    for tool in ("mosquitto", "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub", "openssl"):
        require_tool(tool, HOW)
    as_root = os.geteuid() == 0
    # What the Debian package leaves behind: its main file, /var/lib/mosquitto for the user.
    etc = root / "etc" / "mosquitto"
    etc.mkdir(parents=True)
    (etc / "conf.d").mkdir()
    (etc / "mosquitto.conf").write_text(
        "pid_file /run/mosquitto/mosquitto.pid\npersistence true\n"
        "persistence_location /var/lib/mosquitto/\nlog_dest file /var/log/mosquitto/mosquitto.log\n"
        "include_dir /etc/mosquitto/conf.d\n")
    lib = root / "var" / "lib" / "mosquitto"
    lib.mkdir(parents=True)
    (root / "home").mkdir()
    if as_root:
        shutil.chown(lib, "mosquitto", "mosquitto")
    bindir = root / "bin"  # `aedgate` is this checkout's CLI, run by this Python
    bindir.mkdir()
    (bindir / "aedgate").write_text("#!/bin/sh\nexec %s -m host_tools.cli \"$@\"\n" % sys.executable)
    (bindir / "aedgate").chmod(0o755)
    env = dict(os.environ, HOME=str(root / "home"), PYTHONPATH=str(ROOT),
               PATH="%s:%s" % (bindir, os.environ.get("PATH", "")))

    broker = DocBroker(root, etc / "mosquitto.conf")
    outputs = []
    cwd = [str(ROOT)]

    def run(lines):
        if not lines:
            return
        # `cd` carries over between segments, as it does in the reader's shell
        script = "cd %s\nset -eu\n%s\npwd >&3\n" % (cwd[0], "\n".join(lines))
        r = subprocess.run(["bash", "-c", "exec 3>%s/.pwd; %s" % (root, script)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, "step failed:\n%s\n--- output:\n%s%s" % (
            "\n".join(lines), r.stdout, r.stderr)
        cwd[0] = (root / ".pwd").read_text().strip()
        outputs.append((lines, r.stdout))

    try:
        for block in shell_blocks(DOC.read_text()):
            seg = []
            for line in block:
                if line.startswith("sudo apt-get install"):
                    continue
                if "systemctl restart mosquitto" in line:
                    run(seg)
                    seg = []
                    broker.start()
                    continue
                if "systemctl reload mosquitto" in line:
                    run(seg)
                    seg = []
                    broker.hup()
                    continue
                if line.startswith("journalctl"):  # the log says it runs
                    deadline = time.time() + 5
                    while " running" not in broker.text():
                        assert time.time() < deadline, broker.text()
                        time.sleep(0.05)
                    continue
                line = edit(relocate(re.sub(r"^sudo ", "", line), root))
                if not as_root:  # ownership needs root; the rest is the same
                    line = re.sub(r" -o mosquitto -g mosquitto", "", line)
                    if line.startswith("chown "):
                        continue
                m = re.match(r"mosquitto_passwd (?!-b)(.*) (\w+)$", line)
                if m:  # answer the prompt (twice: password, and again)
                    pw = SERVICE_PASSWORDS[m.group(2)]
                    line = "printf '%s\\n%s\\n' | %s" % (pw, pw, line)
                seg.append(line)
            run(seg)
    except BaseException:
        broker.stop()
        raise
    assert broker.proc is not None, "the doc never starts the broker"
    return broker, outputs


def test_broker_md_steps_work_as_written(root):
    broker, outputs = follow_broker_md(root)
    try:
        password = [out for lines, out in outputs if any("add-device" in l for l in lines)]
        assert password, "the doc adds no device"
        password = password[-1].strip().splitlines()[-1]
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password), password

        pki = root / "home" / "aedgate-pki"
        registry = Client(broker, "registry", SERVICE_PASSWORDS["registry"],
                          port=broker.ports[1883])
        registry.subscribe("aed/v1/#")

        class Net:
            async def open(self, host, port, ssl=None, server_hostname=None):
                return await asyncio.open_connection(host, port, ssl=ssl,
                                                     server_hostname=server_hostname)

        async def device(password):
            ctx = ssl.create_default_context(cadata=(pki / "ca.der").read_bytes())
            c = MQTTClient("cab-0001", Net(), "127.0.0.1", broker.ports[8883], user="cab-0001",
                           password=password, ssl=ctx, server_hostname="mqtt.example.org",
                           timeout_ms=5000)
            try:
                await c.connect()
                run_task = asyncio.create_task(c.run())
                await c.publish("aed/v1/cab-0001/status", b'{"online": true, "doc": 1}', qos=1)
                await c.disconnect()
                await asyncio.gather(run_task, return_exceptions=True)
            finally:
                c.close()
        asyncio.run(device(password))
        registry.got("aed/v1/cab-0001/status", b'{"online": true, "doc": 1}')
        with pytest.raises(Exception, match="connack:[45]"):
            asyncio.run(device("not-the-password"))
        registry.close()
    finally:
        broker.stop()


def test_a_broker_that_cannot_start_says_why(root):
    """The shipped file logs to stderr (the journal, under systemd): with `log_dest syslog` a
    broker missing its password file exited with status 13 and no word on the terminal."""
    conf = root / "etc" / "mosquitto" / "mosquitto.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "deploy" / "mosquitto" / "mosquitto.conf", conf)
    broker = DocBroker(root, conf)  # moves paths and ports; no password file exists there
    with pytest.raises(AssertionError, match=r"(?s)exited 13: .*Error: Unable to open pwfile"):
        broker.start()
