# Firmware updates over MQTT (firmware/aedgate/update.py) on both runtimes: the real App, its
# real publisher (App._publish_all) and flash, a signed release built here (edsign.py, the
# token tests' CBOR encoder), and an update server played by the MQTT client the publisher
# writes to: it answers each get with a CBOR block, as docs/protocol.md says the server does.
import hashlib
import json

from aedgate import update
from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from edsign import public_key
from fwtest import CutFlash, FullFlash, Hardware, PowerCut, temp_flash, wipe
from slots import Slots
from test_release import SEED, signed
from test_token import enc

PUB = public_key(SEED)
BODY = b"x" * 700        # app.py of a test release: three 256-byte blocks
SAME = b"# lock.py, unchanged since 0.1.0\n" + b"y" * 2500   # copied from the root, not fetched


def _files(ver):
    return [("aedgate/__init__.py", b"VERSION = %r\n" % ver),
            ("aedgate/lock.py", SAME),
            ("aedgate/app.py", b"# app " + ver.encode() + b"\n" + BODY)]


def _release(ver="0.2.0", board="esp32", files=None, **kw):
    files = files or _files(ver)
    m = {"format": 1, "version": ver, "board": board, "created": 1795000000,
         "files": [[p, len(d), hashlib.sha256(d).digest()] for p, d in files]}
    m.update(kw)
    return signed(m), files


def _root(f):
    # The root's package, version 0.1.0 (aedgate.VERSION, what the App reports running).
    f.sub("aedgate").write("__init__.py", b"VERSION = '0.1.0'\n")
    f.sub("aedgate").write("app.py", b"# app 0.1.0\n" + BODY)
    f.sub("aedgate").write("lock.py", SAME)


def _booted(f):
    """Boot as boot.py does (a hard reset): the version whose every file is whole, or None."""
    slot = Slots(f).boot(True)
    d = (f.sub(slot) if slot else f).sub("aedgate")
    init, app = d.read("__init__.py"), d.read("app.py")
    if init is None or app is None or d.read("lock.py") != SAME:
        return None
    ver = init.decode().split("'")[1]
    return ver if app == b"# app " + ver.encode() + b"\n" + BODY else None


def _app(f, **cfg):
    c = {"device_id": "cab-0007", "update_block": 256,
         "release_keys": [{"kid": "", "key": PUB.hex()}]}
    c.update(cfg)
    f.write("config.json", json.dumps(c))
    return App(Hardware(), f)


class Server:
    """The MQTT client App._publish_all writes to, and behind it the update server: events are
    kept; each get is answered with its block (or as `answer` says)."""

    timeout_ms = 10000

    def __init__(self, app, raw, files, answer=None):
        self.app = app
        self.blobs = {"release.cose": raw}
        for p, d in files:
            self.blobs[p] = d
        self.answer = answer    # (get, data) -> data to send, or None to send nothing
        self.events = []
        self.gets = []
        self.get_qos = set()    # QoS of the gets: 0 (docs/protocol.md: no PUBACK per block)
        self.busy = []          # what waited when a get went out: (outbox, acks, window open)

    async def publish(self, topic, payload, qos=0, retain=False):
        kind = topic.split("/", 3)[3]
        if kind == "event":
            self.events.append(json.loads(payload))
        elif kind == "update/get":
            app = self.app
            self.busy.append((len(app.outbox), len(app._acks), app.window.task is not None))
            g = json.loads(payload)
            self.gets.append(g)
            self.get_qos.add(qos)
            asyncio.create_task(self._block(g))
        await sleep_ms(0)

    async def _block(self, g):
        await sleep_ms(1)
        data = self.blobs[g["file"]][g["offset"]:g["offset"] + g["len"]]
        if self.answer:
            data = self.answer(g, data)
            if data is None:
                return
        block = enc([bytes.fromhex(g["release"]), g["file"], g["offset"], data])
        self.app._on_message(self.app.topic + "update/block", block, False, False)

    def types(self):
        return [e["type"] for e in self.events]


def offer(app, raw):
    rid = hashlib.sha256(raw).digest()[:8].hex()
    app._on_message(app.topic + "update/offer",
                    json.dumps({"v": 1, "ts": 1796000000, "release": rid, "size": len(raw)}), False, False)
    return rid


def drive(app, server, done, stop=None, limit_ms=60000):
    """Run the app's update task and its publisher until `done(server)`, the update task ends
    (Restart), or `stop()` (a power cut). Returns the update task's exception, or None."""
    ended = []

    async def guard(coro, mine):
        # Whatever ends a task stays inside it (MicroPython's loop re-raises a BaseException
        # such as PowerCut out of asyncio.run and keeps the other tasks queued for the next run).
        try:
            await coro
        except BaseException as e:  # noqa: B036 - the test looks at what ended it
            if mine:
                ended.append(e)

    async def main():
        upd = asyncio.create_task(guard(app._updates(), True))
        pub = asyncio.create_task(guard(app._publish_all(server), False))
        await sleep_ms(0)          # both started, even when stop() holds already
        waited = 0
        while not ended and not done(server) and not (stop and stop()) and waited < limit_ms:
            await sleep_ms(5)
            waited += 5
        for t in (upd, pub):
            t.cancel()
        await sleep_ms(0)
        await sleep_ms(0)
        e = ended[0] if ended else None
        return None if isinstance(e, asyncio.CancelledError) else e
    return asyncio.run(main())


def _refused(server):
    return "update_refused" in server.types()


def test_download_verify_install_then_reset_into_the_new_slot():
    f = temp_flash()
    _root(f)
    app = _app(f)
    raw, files = _release("0.2.0")
    server = Server(app, raw, files)
    rid = offer(app, raw)
    end = drive(app, server, lambda s: False)
    assert isinstance(end, update.Restart), end
    evs = [e for e in server.events if e["type"].startswith("update_")]
    assert [e["type"] for e in evs] == ["update_offered", "update_verified", "update_downloaded",
                                        "update_installed"]
    assert evs[0]["release"] == rid and evs[0]["size"] == len(raw)
    assert evs[1] == dict(evs[1], release=rid, version="0.2.0")
    assert evs[2]["bytes"] == sum(len(d) for _, d in files)
    assert evs[3]["version"] == "0.2.0" and evs[3]["slot"] == "a"
    assert len(app.outbox) == 0                       # the reset waited for the events to go
    # release.cose first, then each file in order, 256 bytes a get, never past a file's end
    order = [(g["file"], g["offset"], g["len"]) for g in server.gets]
    assert order[0] == ("release.cose", 0, min(256, len(raw)))
    assert [o for o in order if o[0] == "aedgate/app.py"] == [
        ("aedgate/app.py", 0, 256), ("aedgate/app.py", 256, 256), ("aedgate/app.py", 512, len(files[2][1]) - 512)]
    # lock.py is the running version's byte for byte: copied on the flash, never asked for
    assert sorted(set(o[0] for o in order)) == ["aedgate/__init__.py", "aedgate/app.py", "release.cose"]
    assert f.sub("a").sub("aedgate").read("lock.py") == SAME
    assert all(b == (0, 0, False) for b in server.busy)  # never a get while something else waited
    assert server.get_qos == {0}                      # no PUBACK round trip per block
    assert _booted(f) == "0.2.0"                      # boot.py after the reset: the new slot, on trial
    assert Slots(f).rec["trial"] == 1
    # The same offer again (the server repeats it until it sees a result): nothing to do.
    app = _app(f)
    server = Server(app, raw, files)
    offer(app, raw)
    drive(app, server, lambda s: False, limit_ms=300)
    assert server.gets == [] and not [t for t in server.types() if t in ("update_offered", "update_refused")]
    wipe(f)


def test_only_files_the_running_version_lacks_byte_for_byte_are_fetched():
    # A copy at the root that differs (same size, one byte: rot or a technician's patch), one
    # that is missing and one that is longer are fetched; the unchanged one is copied. The
    # running slot is the source once an update has run: slot "a" here, the new one goes to "b".
    f = temp_flash()
    _root(f)
    same = b"z" * 3000
    rotten = bytearray(same)
    rotten[1234] ^= 1
    files = _files("0.2.0") + [("aedgate/rot.py", same), ("aedgate/new.py", same),
                               ("aedgate/long.py", same)]
    f.sub("aedgate").write("rot.py", bytes(rotten))
    f.sub("aedgate").write("long.py", same + b"\n")
    raw, files = _release("0.2.0", files=files)
    app = _app(f)
    server = Server(app, raw, files)
    offer(app, raw)
    assert isinstance(drive(app, server, lambda s: False), update.Restart)
    fetched = sorted(set(g["file"] for g in server.gets))
    assert fetched == ["aedgate/__init__.py", "aedgate/app.py", "aedgate/long.py", "aedgate/new.py",
                       "aedgate/rot.py", "release.cose"], fetched
    assert _booted(f) == "0.2.0"
    slot = f.sub("a").sub("aedgate")
    assert [slot.read(n) for n in ("rot.py", "new.py", "long.py")] == [same] * 3
    Slots(f).confirm()
    # 0.3.0 from slot "a": everything but __init__.py and app.py is copied from "a" into "b"
    raw3, files3 = _release("0.3.0", files=_files("0.3.0") + files[3:])
    app = _app(f)
    server = Server(app, raw3, files3)
    offer(app, raw3)
    assert isinstance(drive(app, server, lambda s: False), update.Restart)
    assert sorted(set(g["file"] for g in server.gets)) == ["aedgate/__init__.py", "aedgate/app.py",
                                                          "release.cose"]
    assert _booted(f) == "0.3.0" and Slots(f).rec["slot"] == "b"
    assert f.sub("b").sub("aedgate").read("lock.py") == SAME
    wipe(f)


def _refusal(raw, files, answer=None, **cfg):
    f = temp_flash()
    _root(f)
    app = _app(f, **cfg)
    server = Server(app, raw, files, answer)
    offer(app, raw)
    drive(app, server, _refused)
    ev = [e for e in server.events if e["type"] == "update_refused"]
    assert Slots(f).rec["slot"] == "" and Slots(f).rec["trial"] == 0     # nothing installed
    assert _booted(f) == "0.1.0"
    assert f.sub("a").read("version") is None
    # the app keeps running: a second refused offer is answered again, with the same reason
    app.update = None          # (drive runs the update task afresh)
    server2 = Server(app, raw, files, answer)
    offer(app, raw)
    drive(app, server2, _refused)
    again = [e for e in server2.events if e["type"] == "update_refused"]
    wipe(f)
    return ev, again, server


def test_tampered_block_refused_bad_file_after_one_fresh_fetch():
    raw, files = _release("0.2.0")

    def flip(g, data):
        if g["file"] == "aedgate/app.py" and g["offset"] == 256:
            return data[:-1] + bytes([data[-1] ^ 1])
        return data
    ev, again, server = _refusal(raw, files, flip)
    assert ev == [dict(ev[0], reason="bad_file", detail="aedgate/app.py")]
    assert again[0]["reason"] == "bad_file" and again[0]["release"] == ev[0]["release"]
    assert len([g for g in server.gets if g["file"] == "aedgate/app.py" and g["offset"] == 256]) == 2
    assert "update_installed" not in server.types()


def test_wrong_signature_refused_before_any_file_is_fetched():
    raw, files = _release("0.2.0")
    bad = bytearray(raw)
    bad[-1] ^= 0x40
    ev, again, server = _refusal(bytes(bad), files)
    assert ev[0]["reason"] == "bad_signature" and again[0]["reason"] == "bad_signature"
    assert {g["file"] for g in server.gets} == {"release.cose"}


def test_unknown_key_refused():
    raw, files = _release("0.2.0")
    ev, _, _ = _refusal(raw, files, release_keys=[{"kid": "", "key": public_key(bytes(32)).hex()}])
    assert ev[0]["reason"] == "unknown_kid"


def test_downgrade_and_wrong_board_refused():
    raw, files = _release("0.0.9")
    assert _refusal(raw, files)[0][0]["reason"] == "not_newer"
    raw, files = _release("0.2.0", board="esp32s3")
    ev = _refusal(raw, files)[0]
    assert ev[0]["reason"] == "wrong_board" and ev[0]["detail"] == "esp32s3"


def test_image_refused_without_an_image_slot():
    # A release carrying the MicroPython image, on a board without OTA partitions (hw here has
    # no image_slot): refused before anything is written.
    img = b"\xe9" + bytes(300)
    raw, files = _release("0.2.0", files=_files("0.2.0") + [("micropython.bin", img),
                                                            ("micropython.bin.sha", hashlib.sha256(img).digest())])
    ev, _, server = _refusal(raw, files)
    assert ev[0]["reason"] == "no_image_slot"
    assert {g["file"] for g in server.gets} == {"release.cose"}


def test_truncated_release_cose_refused():
    raw, files = _release("0.2.0")
    # the server has only its first 100 bytes: then an empty block (at "the end of the file")
    ev, _, _ = _refusal(raw, files, lambda g, d: d[:max(0, 100 - g["offset"])] if g["file"] == "release.cose" else d)
    assert ev[0]["reason"] == "malformed"


def test_full_flash_refuses_no_space_and_the_app_carries_on():
    f = temp_flash()
    _root(f)
    full = FullFlash(f, room=1 << 30)
    app = _app(full)
    raw, files = _release("0.2.0")

    def fill(g, data):
        if g["file"] == "aedgate/app.py":
            full.room = 0                  # something else filled the filesystem meanwhile
        return data
    server = Server(app, raw, files, fill)
    offer(app, raw)
    drive(app, server, _refused)
    ev = [e for e in server.events if e["type"] == "update_refused"]
    assert ev and ev[0]["reason"] == "no_space", server.types()
    full.room = 1 << 30
    assert _booted(f) == "0.1.0"
    wipe(f)


def test_gets_wait_for_acks_events_and_the_unlock_window():
    f = temp_flash()
    _root(f)
    app = _app(f)
    raw, files = _release("0.2.0")
    n = [0]

    def meddle(g, data):
        # While the device waits for this block, things happen: an ack, events, an unlock window.
        n[0] += 1
        if n[0] == 2:
            app.ack({"result": "accepted", "cti": "0102030405060708", "cmd": "unlock"})
            app.emit({"type": "door_opened"})
        if n[0] == 4:
            app.window.start("M-1", 1)           # a one-second window: no get until it is over
        return data
    server = Server(app, raw, files, meddle)
    offer(app, raw)
    end = drive(app, server, lambda s: False)
    assert isinstance(end, update.Restart), end
    assert all(b == (0, 0, False) for b in server.busy), server.busy
    assert "unlocked" in server.types() and "relocked" in server.types()
    assert _booted(f) == "0.2.0"
    wipe(f)


def test_a_block_that_was_not_asked_for_is_dropped_and_asked_again():
    # One block comes back with the wrong offset: dropped; after 10 s the device asks again.
    f = temp_flash()
    _root(f)
    app = _app(f)
    raw, files = _release("0.2.0")
    wrong = [0]

    def answer(g, data):
        if g["file"] == "aedgate/app.py" and g["offset"] == 256 and not wrong[0]:
            wrong[0] = 1
            g["offset"] = 0        # the block says it is another one
        return data
    server = Server(app, raw, files, answer)
    offer(app, raw)
    end = drive(app, server, lambda s: False)
    assert isinstance(end, update.Restart), end
    asked = [g["offset"] for g in server.gets if g["file"] == "aedgate/app.py"]
    assert asked == [0, 0, 256, 512]   # (the 2nd entry is the get whose answer was mislabelled)
    assert _booted(f) == "0.2.0"
    wipe(f)


def _cut_run(f, raw, files, cut):
    """Boot an app on `f` whose flash fails at the `cut`-th change from the offer on (-1: never),
    offer the release and serve it. Returns (changes made, how it ended)."""
    count = [0, -1]
    app = _app(CutFlash(f, count))
    count[0] = 0
    count[1] = cut
    server = Server(app, raw, files)
    end = None
    try:
        offer(app, raw)
        end = drive(app, server, lambda s: False, stop=lambda: count[0] == count[1])
    except PowerCut as e:
        end = e
    return count[0], end


def test_power_cut_at_every_flash_write_of_a_download_boots_old_or_new_then_resumes():
    raw, files = _release("0.2.0")
    f = temp_flash()
    _root(f)
    total, end = _cut_run(f, raw, files, -1)
    assert isinstance(end, update.Restart), end
    wipe(f)
    bad = []
    for n in range(total):
        f = temp_flash()
        _root(f)
        changes, end = _cut_run(f, raw, files, n)
        if isinstance(end, update.Restart):
            bad.append((n, "no cut"))
        v = _booted(f)                            # after the cut: the old version or the new
        if v not in ("0.1.0", "0.2.0"):
            bad.append((n, v))
        if v == "0.1.0":
            # back on the old version: the next start resumes (the server repeats its offer)
            # and ends in the new one
            app = _app(f)
            server = Server(app, raw, files)
            offer(app, raw)
            end = drive(app, server, lambda s: False)
            if not isinstance(end, update.Restart) or _booted(f) != "0.2.0":
                bad.append((n, "no resume", end))
        else:
            # the new one runs: the server's repeated offer is not fetched nor refused again
            app = _app(f)
            server = Server(app, raw, files)
            offer(app, raw)
            drive(app, server, lambda s: False, limit_ms=100)
            if server.gets or "update_refused" in server.types():
                bad.append((n, "fetched again", server.types()))
        wipe(f)
    print("update: power cut at each of %d flash changes, %d boot neither version or do not resume"
          % (total, len(bad)))
    assert total >= 20
    assert bad == []
