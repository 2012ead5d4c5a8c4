"""The production broker configuration (docs/deploy/mosquitto/) enforced by a real Mosquitto.

The broker runs with the shipped mosquitto.conf and acl, rewritten only where a test must: file
paths into the test's tmp dir, listeners onto free loopback ports, log to a file, and `user root`
when the tests run as root (Mosquitto would otherwise drop to the `mosquitto` user, which cannot
read pytest's private tmp dir). Clients are paho-mqtt 2.x, logged in as devices and backends.

Denied publishes are silent in MQTT 3.1.1 (Mosquitto still sends PUBACK and drops the message),
and Mosquitto 2.0's acl_file grants every SUBSCRIBE and checks read access per delivered
message. So "cannot" is shown by absence: after the forbidden message, a permitted marker is
sent along the same path, and once the marker has arrived the forbidden message is checked
to be missing.
"""
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from host_tools.commands import broker as broker_tool
from host_tools.cli import main as aedgate
from tests.fixtures import ROOT, free_port, tool

DEPLOY = ROOT / "docs" / "deploy" / "mosquitto"
PLAIN, TLS_PW = 1883, 8883  # the production file's listener ports


def listener_blocks(conf_text):
    """[(port or None, [(key, value), ...]), ...]: the settings before the first listener, then
    each listener's."""
    blocks = [(None, [])]
    for line in conf_text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            blocks.append((int(words[1]), []))
        else:
            blocks[-1][1].append((words[0], " ".join(words[1:])))
    return blocks


class ProductionBroker:
    """Mosquitto with docs/deploy/mosquitto/mosquitto.conf + acl, moved into `workdir`.

    tls: None drops the TLS listeners; else a dict with "ca", "cert", "key" file paths.
    ports: production port -> the free loopback port used here."""

    def __init__(self, workdir, tls=None, acl_text=None):
        self.workdir = Path(workdir)
        self.passwd = self.workdir / "passwd"
        self.acl = self.workdir / "acl"
        self.acl.write_text(acl_text if acl_text is not None else (DEPLOY / "acl").read_text())
        self.passwd.touch(mode=0o600)
        (self.workdir / "persist").mkdir(exist_ok=True)
        self.logfile = self.workdir / "mosquitto.log"
        self.ports = {}
        self.settings = {}  # every setting of the production file: key -> [values]
        out, skipping = [], False
        paths = {"password_file": self.passwd, "acl_file": self.acl,
                 "persistence_location": str(self.workdir / "persist") + "/"}
        if tls:
            paths.update(cafile=tls["ca"], certfile=tls["cert"], keyfile=tls["key"])
        for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            key, rest = words[0], words[1:]
            self.settings.setdefault(key, []).append(" ".join(rest))
            if key == "listener":
                prod = int(rest[0])
                skipping = tls is None and prod != PLAIN
                if skipping:
                    continue
                self.ports[prod] = free_port()
                line = "listener %d 127.0.0.1" % self.ports[prod]
            elif skipping:
                continue
            elif key in paths:
                line = "%s %s" % (key, paths[key])
            elif key == "log_dest":
                line = "log_dest file %s" % self.logfile  # flushed per line, unlike stdout
            out.append(line)
        for must in ("password_file", "acl_file", "listener"):
            assert must in self.settings, "production mosquitto.conf lost %r" % must
        if os.geteuid() == 0:
            out.append("user root")
        self.conf = self.workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(out) + "\n")
        self.port = self.ports[PLAIN]
        self.proc = None

    def start(self):
        exe = tool("mosquitto")
        if exe is None:
            pytest.fail("mosquitto is not installed: run `make test` or apt-get install mosquitto")
        self.log = open(self.workdir / "mosquitto.out", "ab")
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited: %s" % self.log_text())
            try:
                import socket
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: %s" % self.log_text())

    def reload(self):
        """SIGHUP: Mosquitto re-reads password_file and acl_file (what systemctl reload does)."""
        n = self.log_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while self.log_text().count("Reloading config") <= n:
            assert time.time() < deadline, "mosquitto did not reload: %s" % self.log_text()
            time.sleep(0.05)
        time.sleep(0.2)  # the log line comes first, the files are read right after

    def log_text(self):
        return "".join(f.read_text(errors="replace") for f in (self.logfile, self.workdir / "mosquitto.out")
                       if f.exists())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        if self.proc:
            self.log.close()

    def add_user(self, user, password):
        """A password entry written straight with mosquitto_passwd, bypassing our tool's id check
        (to show what the broker itself does with such a name)."""
        subprocess.run([tool("mosquitto_passwd") or "mosquitto_passwd", "-b", str(self.passwd),
                        user, password], check=True, capture_output=True)


class Client:
    """A paho-mqtt 2.x client that records what happens to it."""

    def __init__(self, broker, user, password, client_id=None, port=None, tls=None,
                 clean_session=True, will=None):
        import paho.mqtt.client as mqtt
        self.cond = threading.Condition()
        self.messages, self.granted, self.connack, self.disconnected = [], [], None, None
        self.disconnects = 0  # every disconnect, including the ones paho reconnects after
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, clean_session=clean_session,
                             client_id=client_id if client_id is not None else (user or "anon"))
        if user is not None:
            self.c.username_pw_set(user, password)
        if will:
            self.c.will_set(*will, qos=1, retain=True)
        if tls:
            tls(self.c)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.connect("127.0.0.1", port or broker.port, keepalive=30)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")

    def _note(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, c, ud, flags, rc, props):
        self._note(lambda: setattr(self, "connack", rc))

    def _on_message(self, c, ud, m):
        self._note(lambda: self.messages.append((m.topic, m.payload, m.retain)))

    def _on_subscribe(self, c, ud, mid, rcs, props):
        self._note(lambda: self.granted.append([r.value for r in rcs]))

    def _on_disconnect(self, c, ud, flags, rc, props):
        def note():
            self.disconnected = rc
            self.disconnects += 1
        self._note(note)

    @property
    def ok(self):
        return self.connack is not None and self.connack.value == 0 and self.disconnected is None

    def wait(self, pred, what, timeout=5):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "no %s within %ss" % (what, timeout)

    def subscribe(self, *topics):
        n = len(self.granted)
        self.c.subscribe([(t, 1) for t in topics])
        self.wait(lambda: len(self.granted) > n, "SUBACK")
        return self.granted[n]

    def publish(self, topic, payload, retain=False):
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def got(self, topic, payload=None, timeout=5):
        self.wait(lambda: any(m[0] == topic and payload in (None, m[1]) for m in self.messages),
                  "message on %s" % topic, timeout)

    def topics(self):
        with self.cond:
            return [m[0] for m in self.messages]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


PASSWORDS = {"cab-a": "pw-a", "cab-b": "pw-b", "dispatch": "pw-dispatch", "registry": "pw-reg",
             "monitor": "pw-mon"}


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    b = ProductionBroker(tmp_path_factory.mktemp("prodbroker"))
    for user, pw in PASSWORDS.items():
        broker_tool.set_password(b.passwd, user, pw)
    # Names no tool of ours would create, given password entries directly: Mosquitto's own
    # handling of them is what is tested.
    # ("#" alone cannot even have an entry: Mosquitto reads a line starting with # as a comment.)
    for user in ("+", "cab-#", "cab-b/cmd"):
        b.add_user(user, "pw-evil")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def clients(prod):
    made = []

    def login(user, client_id=None, password=None, clean_session=True):
        c = Client(prod, user, PASSWORDS.get(user, "pw-evil") if password is None else password,
                   client_id=client_id, clean_session=clean_session)
        made.append(c)
        return c
    yield login
    for c in made:
        c.close()


def test_production_file_is_locked_down(prod):
    s = prod.settings
    assert s["allow_anonymous"] == ["false"] and s["per_listener_settings"] == ["false"]
    assert int(s["max_packet_size"][0]) <= 4096
    assert s["persistence"] == ["true"] and s["retain_available"] == ["true"]
    assert s["max_inflight_messages"] and s["password_file"] and s["acl_file"]
    # No listener asks for client certificates: the firmware cannot present one.
    assert "require_certificate" not in s and "use_identity_as_username" not in s
    assert sorted(int(v.split()[0]) for v in s["listener"]) == [PLAIN, TLS_PW]
    # use_username_as_clientid is a listener setting (src/conf.c: cur_listener), not covered by
    # per_listener_settings false: every listener block must have it, and none may come before
    # the first listener (that would configure Mosquitto's default listener, an extra port 1883).
    blocks = listener_blocks((DEPLOY / "mosquitto.conf").read_text())
    assert blocks[0][0] is None and not any(k == "use_username_as_clientid" for k, _ in blocks[0][1])
    for port, settings in blocks[1:]:
        assert ("use_username_as_clientid", "true") in settings, port
    assert "127.0.0.1" in [v.split()[1] for v in s["listener"] if v.split()[0] == str(PLAIN)]
    assert broker_tool.acl_problems((DEPLOY / "acl").read_text()) == []


def test_anonymous_and_wrong_password_refused(prod, clients):
    anon = clients(None)
    wrong = clients("cab-a", password="pw-b")
    unknown = clients("cab-zz", password="pw-a")
    for c in (anon, wrong, unknown):
        assert c.connack.value == 0x87 and not c.ok, c.connack  # MQTT 3.1.1 rc 5, "not authorized"
    assert clients("cab-a").ok  # the control: right password


def test_device_telemetry_reaches_registry_and_dispatch_reaches_device(prod, clients):
    registry, dispatch = clients("registry"), clients("dispatch")
    assert registry.subscribe("aed/v1/#") == [1]
    assert dispatch.subscribe("aed/v1/+/ack") == [1]
    a = clients("cab-a")
    assert a.subscribe("aed/v1/cab-a/cmd/#") == [1]
    for leaf in ("status", "state", "event", "ack"):
        a.publish("aed/v1/cab-a/" + leaf, b'{"v": 1, "leaf": "%s"}' % leaf.encode(),
                  retain=leaf in ("status", "state"))
        registry.got("aed/v1/cab-a/" + leaf)
    dispatch.got("aed/v1/cab-a/ack")
    dispatch.publish("aed/v1/cab-a/cmd/unlock", b"\xd1\x84token")
    a.got("aed/v1/cab-a/cmd/unlock", b"\xd1\x84token")
    registry.got("aed/v1/cab-a/cmd/unlock")  # registry reads everything under aed/v1/
    # retained status/state: a backend starting later learns them at once (the same account: the
    # first registry client goes first, or the second would take over its session)
    registry.close()
    late = clients("registry")
    late.subscribe("aed/v1/+/status", "aed/v1/+/state")
    late.got("aed/v1/cab-a/status")
    late.got("aed/v1/cab-a/state")
    assert all(m[2] for m in late.messages)


def test_device_cannot_read_other_devices_commands(prod, clients):
    a, b, dispatch = clients("cab-a"), clients("cab-b"), clients("dispatch")
    a.subscribe("aed/v1/cab-b/cmd/#", "aed/v1/+/cmd/#", "aed/v1/cab-a/cmd/#")
    b.subscribe("aed/v1/cab-b/cmd/#")
    dispatch.publish("aed/v1/cab-b/cmd/unlock", b"for-b")
    dispatch.publish("aed/v1/cab-a/cmd/unlock", b"marker-a")
    b.got("aed/v1/cab-b/cmd/unlock", b"for-b")  # the control: b reads its own
    a.got("aed/v1/cab-a/cmd/unlock", b"marker-a")
    assert not [m for m in a.messages if b"for-b" in m[1]], a.messages


def test_device_cannot_publish_as_another_device_or_into_commands(prod, clients):
    registry = clients("registry")
    registry.subscribe("aed/v1/#")
    a, b = clients("cab-a"), clients("cab-b")
    b.subscribe("aed/v1/cab-b/cmd/#")
    a.subscribe("aed/v1/cab-a/cmd/#")
    a.publish("aed/v1/cab-b/status", b'{"online": false, "forged": 1}', retain=True)
    a.publish("aed/v1/cab-b/event", b'{"forged": 2}')
    a.publish("aed/v1/cab-b/cmd/unlock", b"forged-for-b")
    a.publish("aed/v1/cab-a/cmd/unlock", b"forged-for-self")
    a.publish("aed/v1/cab-a/cmd", b"forged-cmd-root")
    a.publish("aed/v1/cab-a/status/extra", b"forged-deeper")
    a.publish("aed/v1/cab-a/event", b"marker")  # same client, same order: arrives after them
    registry.got("aed/v1/cab-a/event", b"marker")
    b.publish("aed/v1/cab-b/event", b"marker-b")
    registry.got("aed/v1/cab-b/event", b"marker-b")
    forged = [m for m in registry.messages + a.messages + b.messages if b"forged" in m[1]]
    assert forged == [] and a.ok, forged
    # nor was anything retained: a fresh subscriber sees no retained cab-b status
    registry.close()
    late = clients("registry")
    late.subscribe("aed/v1/cab-b/status")
    time.sleep(0.3)
    assert late.messages == []


def test_device_cannot_subscribe_to_everything_or_sys(prod, clients):
    a = clients("cab-a")
    granted = a.subscribe("#", "$SYS/#", "aed/v1/#")
    assert all(g in (0x80, 0, 1) for g in granted)  # Mosquitto 2.0 grants, then filters reads
    monitor = clients("monitor")
    monitor.subscribe("$SYS/#")  # the control: $SYS exists and the monitor account reads it
    monitor.got("$SYS/broker/version")
    b, dispatch = clients("cab-b"), clients("dispatch")
    b.publish("aed/v1/cab-b/state", b'{"b": 1}')
    dispatch.publish("aed/v1/cab-b/cmd/unlock", b"tok-b")
    dispatch.publish("aed/v1/cab-a/cmd/unlock", b"marker-a")
    a.got("aed/v1/cab-a/cmd/unlock", b"marker-a")  # its own commands still come through "#"
    assert set(a.topics()) == {"aed/v1/cab-a/cmd/unlock"}, a.topics()


@pytest.mark.parametrize("user,client_id", [("+", "plus"), ("cab-#", "hash")])
def test_wildcards_in_user_name_or_client_id_get_no_access(prod, clients, user, client_id):
    """With pattern ACLs, Mosquitto (since 1.4.12/CVE-2017-7650, still in 2.0) denies every
    access to a client whose user name or client id contains + or #. Without that, user "+"
    would turn `pattern read aed/v1/%u/cmd/#` into aed/v1/+/cmd/#: every cabinet's tokens."""
    registry, dispatch = clients("registry"), clients("dispatch")
    registry.subscribe("aed/v1/#")
    evil = clients(user, client_id=client_id)
    assert evil.ok  # Mosquitto lets it log in (right password) ...
    evil.subscribe("aed/v1/+/cmd/#", "aed/v1/cab-a/cmd/#")
    evil.publish("aed/v1/cab-b/status", b"forged-status")
    evil.publish("aed/v1/cab-a/event", b"forged-event")
    dispatch.publish("aed/v1/cab-a/cmd/unlock", b"tok-a")
    dispatch.publish("aed/v1/cab-b/cmd/unlock", b"tok-b")
    registry.got("aed/v1/cab-b/cmd/unlock", b"tok-b")
    time.sleep(0.2)
    assert evil.messages == []  # ... but it can read nothing
    assert not [m for m in registry.messages if b"forged" in m[1]]  # ... and write nothing
    assert "dangerous username" in prod.log_text()


@pytest.mark.parametrize("client_id", ["cab+a", "cab#a", "cab-b"])
def test_client_id_is_replaced_by_the_user_name(prod, clients, client_id):
    """use_username_as_clientid: whatever client id a device sends, it gets its own user name's
    session and its own topics, nothing more (a + or # in the id no longer matters either)."""
    registry, dispatch = clients("registry"), clients("dispatch")
    registry.subscribe("aed/v1/#")
    a = clients("cab-a", client_id=client_id)
    assert a.ok
    a.subscribe("aed/v1/+/cmd/#")
    a.publish("aed/v1/cab-b/status", b"forged-status")
    a.publish("aed/v1/cab-a/event", b"own-event")
    registry.got("aed/v1/cab-a/event", b"own-event")
    dispatch.publish("aed/v1/cab-b/cmd/unlock", b"tok-b")
    dispatch.publish("aed/v1/cab-a/cmd/unlock", b"tok-a")
    a.got("aed/v1/cab-a/cmd/unlock", b"tok-a")
    assert [m[1] for m in a.messages] == [b"tok-a"]
    assert not [m for m in registry.messages if b"forged" in m[1]]
    assert "New client connected from 127.0.0.1:%d as cab-a " % a.c.socket().getsockname()[1] \
        in prod.log_text()


@pytest.mark.parametrize("victim,victim_client_id", [("cab-b", "cab-b"),
                                                     ("dispatch", "aedgate-dispatch")])
def test_a_device_password_cannot_take_over_another_session(prod, clients, victim,
                                                            victim_client_id):
    """Issue 11 point 1: logged in with cab-a's own password but the victim's client id, an
    attacker used to disconnect the victim (whose will then said `online: false`) and, with a
    clean session, wipe its persistent session and the commands queued in it."""
    registry = clients("registry")
    registry.subscribe("aed/v1/+/status")
    will = ("aed/v1/%s/status" % victim, b'{"online": false, "will": 1}')
    v = Client(prod, victim, PASSWORDS[victim], client_id=victim_client_id, clean_session=False,
               will=will if victim != "dispatch" else None)
    cmd = "aed/v1/cab-b/cmd/#" if victim == "cab-b" else "aed/v1/+/ack"
    v.subscribe(cmd)
    for cid in {victim, victim_client_id}:
        for clean in (True, False, True):  # kick it (clean session or not), three times over
            evil = clients("cab-a", client_id=cid, clean_session=clean)
            assert evil.ok
            evil.publish("aed/v1/cab-a/event", b"evil-was-here")  # it is connected, as cab-a
            evil.close()
    time.sleep(0.3)
    assert v.disconnects == 0 and v.ok, "the victim was disconnected %d times" % v.disconnects
    # Its persistent session survives: taken offline cleanly, it still gets what was sent meanwhile.
    v.c.disconnect()
    v.c.loop_stop()
    for cid in {victim, victim_client_id}:
        evil = clients("cab-a", client_id=cid)
        assert evil.ok
        evil.close()
    sender = clients("dispatch") if victim == "cab-b" else clients("cab-b")
    if victim == "cab-b":
        sender.publish("aed/v1/cab-b/cmd/unlock", b"queued-token")
    else:
        sender.publish("aed/v1/cab-b/ack", b'{"queued": "ack"}')
    sender.close()
    back = Client(prod, victim, PASSWORDS[victim], client_id=victim_client_id, clean_session=False)
    try:
        back.got(cmd.replace("+", "cab-b").replace("/#", "/unlock"), timeout=5)
    finally:
        back.close()
    assert not [m for m in registry.messages if b'"will"' in m[1]], registry.messages


def test_slash_in_user_name_is_not_stopped_by_mosquitto(prod, clients):
    """Mosquitto only rejects + and #. A user named "cab-b/cmd" (if it had a password entry)
    could write aed/v1/cab-b/cmd/status through `pattern write aed/v1/%u/status`, which cab-b
    would receive as a command. The defence is that no such entry is ever created: add-device
    refuses the id (next tests), and without an entry the login fails."""
    b = clients("cab-b")
    b.subscribe("aed/v1/cab-b/cmd/#")
    evil = clients("cab-b/cmd")
    evil.publish("aed/v1/cab-b/cmd/status", b"injected")
    b.got("aed/v1/cab-b/cmd/status", b"injected")
    assert not clients("cab-c/cmd", password="pw-evil").ok  # no entry: refused at CONNECT


def test_oversize_packet_disconnects_the_client(prod, clients):
    registry = clients("registry")
    registry.subscribe("aed/v1/cab-a/event")
    a = clients("cab-a")
    a.publish("aed/v1/cab-a/event", b"x" * 3000)  # the control: under max_packet_size
    registry.got("aed/v1/cab-a/event", b"x" * 3000)
    a.c.publish("aed/v1/cab-a/event", b"y" * 5000, qos=1)
    a.wait(lambda: a.disconnected is not None, "disconnect")
    time.sleep(0.2)
    assert not [m for m in registry.messages if m[1].startswith(b"y")]


# -- aedgate broker add-device ---------------------------------------------------------------

@pytest.mark.parametrize("hash_with", ["mosquitto_passwd", "builtin"])
def test_add_device_then_reload_lets_the_device_in(tmp_path, capsys, hash_with):
    if hash_with == "mosquitto_passwd" and broker_tool.find_mosquitto_passwd() is None:
        pytest.fail("mosquitto_passwd missing (Debian's mosquitto package ships it)")
    b = ProductionBroker(tmp_path)
    broker_tool.set_password(b.passwd, "registry", "pw-reg", hash_with="builtin")
    b.acl.write_text("".join(
        line + "\n" for line in (DEPLOY / "acl").read_text().splitlines()
        if not line.startswith("pattern")))  # the tool has to put the device rules back
    b.start()
    try:
        argv = ["broker", "add-device", "--device", "cab-new", "--password-file", str(b.passwd),
                "--acl", str(b.acl), "--hash-with", hash_with]
        assert aedgate(argv) == 0
        out, err = capsys.readouterr()
        password = out.strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password), out
        assert "added %d device rule" % len(broker_tool.PATTERN_RULES) in err and "(%s)" % hash_with in err, err
        entry = broker_tool.read_password_file(b.passwd)["cab-new"]
        assert entry.startswith("$7$101$") and broker_tool.verify_password(entry, password)
        assert password not in b.passwd.read_text()
        assert broker_tool.acl_problems(b.acl.read_text()) == []
        assert not Client(b, "cab-new", password).ok  # not before the reload
        b.reload()
        dev = Client(b, "cab-new", password)
        assert dev.ok
        registry = Client(b, "registry", "pw-reg")
        registry.subscribe("aed/v1/#")
        dev.publish("aed/v1/cab-new/status", b'{"online": true}')
        registry.got("aed/v1/cab-new/status")
        dev.close()
        # rotation: a second run replaces the password and leaves the ACL alone
        acl_before = b.acl.read_text()
        assert aedgate(argv[:-2] + ["--password", "rotated-pw", "--hash-with", hash_with]) == 0
        assert "replaced the password of cab-new" in capsys.readouterr().err
        assert b.acl.read_text() == acl_before
        assert list(broker_tool.read_password_file(b.passwd)) == ["registry", "cab-new"]
        b.reload()
        assert not Client(b, "cab-new", password).ok
        assert Client(b, "cab-new", "rotated-pw").ok
        registry.close()
    finally:
        b.stop()


def test_builtin_hash_matches_mosquitto_passwd_format():
    # Same algorithm, salt and iteration count as Mosquitto 2.0's mosquitto_passwd: check the
    # builtin writer against an entry the real tool wrote, and the verifier against both.
    exe = broker_tool.find_mosquitto_passwd()
    if exe is None:
        pytest.fail("mosquitto_passwd missing")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "pw"
        subprocess.run([exe, "-c", "-b", str(f), "cab-x", "s3cret"], check=True, capture_output=True)
        theirs = broker_tool.read_password_file(f)["cab-x"]
    _, seven, iters, salt, _ = theirs.split("$")
    import base64
    assert broker_tool.hash_password("s3cret", base64.b64decode(salt), int(iters)) == theirs
    assert broker_tool.verify_password(theirs, "s3cret")
    assert not broker_tool.verify_password(theirs, "s3cret ")


@pytest.mark.parametrize("device", ["cab+1", "cab#", "a/b", "#", "+", "", "x" * 65, "cab-1\n",
                                    "cab 1", "cäb", "cab:1", "dispatch", "registry", "monitor"])
def test_add_device_refuses_bad_and_reserved_ids(tmp_path, capsys, device):
    acl = tmp_path / "acl"
    acl.write_text((DEPLOY / "acl").read_text())
    pw = tmp_path / "passwd"
    assert aedgate(["broker", "add-device", "--device", device, "--password-file", str(pw),
                    "--acl", str(acl)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("aedgate: error: ") and err.count("\n") == 1, err
    assert not pw.exists()


def test_check_acl_finds_dangerous_rules(tmp_path, capsys):
    acl = tmp_path / "acl"
    acl.write_text((DEPLOY / "acl").read_text())
    assert aedgate(["broker", "check-acl", "--acl", str(acl)]) == 0
    assert "ok" in capsys.readouterr().out
    acl.write_text("topic read #\n" + (DEPLOY / "acl").read_text().replace(
        "pattern read aed/v1/%u/cmd/#", "pattern readwrite aed/v1/%u/cmd/#"))
    assert aedgate(["broker", "check-acl", "--acl", str(acl)]) == 1
    out = capsys.readouterr().out
    assert "anonymous" in out and "readwrite" in out and "missing device rule" in out, out
    assert aedgate(["broker", "check-acl", "--acl", str(tmp_path / "nope")]) == 2


def test_add_device_help_teaches_with_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        aedgate(["broker", "add-device", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "aedgate broker add-device --device cab-0001" in out and "reload" in out


@pytest.mark.parametrize("device", ["dispatch", "registry", "monitor", "cab-0001"])
def test_add_device_with_a_mistyped_acl_path_changes_nothing(tmp_path, capsys, device):
    """Issue 11 point 11: with --acl pointing at a file that does not exist, add-device used to
    create a fresh ACL (so it knew no service accounts) and replaced dispatch's password."""
    pw = tmp_path / "passwd"
    broker_tool.set_password(pw, "dispatch", "pw-dispatch", hash_with="builtin")
    before = pw.read_text()
    typo = tmp_path / "acl.typo"
    assert aedgate(["broker", "add-device", "--device", device, "--password-file", str(pw),
                    "--acl", str(typo), "--hash-with", "builtin"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("aedgate: error: ") and err.count("\n") == 1, err
    assert pw.read_text() == before and not typo.exists()


@pytest.mark.parametrize("device", ["dispatch", "registry", "monitor", "dispatch-ops"])
def test_reserved_names_refused_whatever_the_acl_says(tmp_path, capsys, device):
    """A service account's name is refused even when the ACL has no `user` block for it."""
    acl = tmp_path / "acl"
    acl.write_text("".join(line + "\n" for line in (DEPLOY / "acl").read_text().splitlines()
                           if line.startswith("pattern")))
    pw = tmp_path / "passwd"
    assert aedgate(["broker", "add-device", "--device", device, "--password-file", str(pw),
                    "--acl", str(acl), "--hash-with", "builtin"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert not pw.exists()
