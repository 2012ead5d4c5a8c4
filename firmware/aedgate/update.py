# Firmware updates over the cabinet's own MQTT session (docs/protocol.md, "Firmware updates";
# docs/updates.md). Imported only when the first offer arrives (or a download waits to be
# resumed), so an idle cabinet's heap never carries it.
#
#   offer -> release.cose in blocks -> release.verify (async) + accept + Slots.check
#         -> each manifest file in blocks into the free slot, size and SHA-256 checked
#         -> Slots.commit (on trial) -> reset once the outbox has sent update_installed.
#
# Pacing: one get at a time, handed to the app's publisher, which sends it only when no ack or
# event waits and no unlock window is open (App._publish_all); the next get only once the block
# before it is on flash. A block that is not what was asked is dropped; none within 10 s: ask
# again; 6 unanswered asks in a row pause the download until the next offer.
#
# Resumable: a small progress record in two checked copies ("upd.0", "upd.1": CRC-32 + JSON,
# the newer by seq wins, as slots.py's). It holds the release, the phase and the file being
# fetched; the offset within a file is the length of what is on flash (an append is on flash
# whole or not at all on littlefs; a torn one is still a prefix of the block), so each block
# costs one flash write, not two. After a reset the partial file is re-hashed from flash.
import hashlib
import json
from binascii import crc32

from aedgate import cbor, release
from aedgate.compat import TaskSignal, const, sleep_ms, ticks_diff, ticks_ms
from aedgate.release import ReleaseError
from slots import version

BOARD = "esp32"            # the board family this firmware is built for (release manifests' `board`)
IMAGE = "micropython.bin"  # a manifest file that is the MicroPython image, not a slot file
_REC = "upd."
_COSE = "upd.cose"         # release.cose while it is fetched and checked
_RUN = "upd.run"           # there while a download is under way: the app resumes it at boot
BOOTING = b"set_boot"      # in _RUN from just before the image's set_boot() to the slot switch
_WAIT_MS = const(10000)    # no block within this: ask again
_TRIES = const(6)          # unanswered asks in a row before the download pauses
_REDO = const(1)           # a file whose SHA-256 differs is fetched again this often, then refused
_CHUNK = const(1024)       # bytes read at a time from a file the running version already has


def _parts(d, name, size, h, got):
    # The file `name` of folder `d` in _CHUNK-byte parts, each added to the hash `h`; got[0]
    # counts the bytes read (-1: no such file). Stops once past `size` (not the file signed).
    while got[0] <= size:
        data = d.read_at(name, got[0], _CHUNK)
        if data is None:
            got[0] = -1
        if not data:
            return
        h.update(data)
        got[0] += len(data)
        yield data


class Paused(Exception):
    """The update server stopped answering, or another release was offered: wait for an offer."""


class Restart(Exception):
    """Not a fault: main.py resets the board at once (no crash pause). Raised when a release is
    installed and update_installed sent (boot.py then runs the new slot on trial), and by
    App._trial when a release on trial is given up (the previous slot runs)."""


def _encode(rec):
    body = json.dumps(rec).encode()
    return (crc32(body) & 0xFFFFFFFF).to_bytes(4, "big") + body


def _decode(data):
    if not data or len(data) < 5 or crc32(data[4:]) & 0xFFFFFFFF != int.from_bytes(data[:4], "big"):
        return None
    try:
        rec = json.loads(data[4:])
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None


def parse_offer(payload):
    """(release id hex, size) of a valid offer, or None (nothing in it is trusted)."""
    try:
        o = json.loads(payload)
        rid, size = o["release"], o["size"]
    except (ValueError, KeyError, TypeError):
        return None
    if (o.get("v") != 1 or type(rid) is not str or len(rid) != 16 or type(size) is not int
            or not 0 < size <= release.MAX_RELEASE_BYTES):
        return None
    for c in rid:
        if c not in "0123456789abcdef":
            return None
    return rid, size


class Progress:
    """The download's progress record: rel (release id, hex), size (of release.cose), ph
    (cose, files, done, refused), i (file index), ver, why/det (refusal)."""

    def __init__(self, flash):
        self.flash = flash
        self._at = 1
        rec = None
        for i in (0, 1):
            r = _decode(flash.read(_REC + str(i)))
            if r is not None and (rec is None or r["seq"] > rec["seq"]):
                rec, self._at = r, i
        self.rec = rec or {"seq": 0}

    def save(self, **kw):
        rec = dict(self.rec)
        rec.update(kw)
        rec["seq"] = self.rec["seq"] + 1
        at = 1 - self._at
        self.flash.write(_REC + str(at), _encode(rec))
        self.rec, self._at = rec, at


class Update:
    def __init__(self, app):
        self.app = app
        self.flash = app.flash
        self.prog = Progress(app.flash)
        self.offer = None        # (release hex, size) of the newest offer not yet taken up
        self.signal = TaskSignal()
        self.ask = None          # the get waiting for the publisher (bytes), or None
        self.sent_at = None      # ticks when it went out
        self._want = None        # (release id, file, offset, len) of the block awaited
        self._got = None
        self.rid = None          # the release being fetched (8 bytes)

    # -- from the MQTT reader (App._on_message) ----------------------------------------------
    def offered(self, payload):
        o = parse_offer(payload)
        if o is None:
            self.app.log("update: offer ignored (not a valid offer)")
            return
        self.offer = o
        self.signal.set()

    def block(self, payload):
        """A block: kept only when it is exactly what was asked (release, file, offset, not
        longer than asked); anything else is dropped."""
        w = self._want
        if w is None or payload is None:
            return
        try:
            b = cbor.decode(payload, 1)
        except cbor.CBORError:
            return
        if (type(b) is not list or len(b) != 4 or b[0] != w[0] or b[1] != w[1] or b[2] != w[2]
                or type(b[3]) is not bytes or len(b[3]) > w[3]):
            return
        self._want = None
        self._got = b[3]
        self.signal.set()

    # -- for the publisher (App._publish_all) ----------------------------------------------------
    def sent(self):
        self.ask = None
        self.sent_at = ticks_ms()

    # -- the task ----------------------------------------------------------------------------------
    async def run(self):
        """Forever: take up each offer (and a download a reset interrupted). Raises Restart when
        an installed release waits for the reset."""
        rec = self.prog.rec
        if rec.get("ph") in ("cose", "files"):
            self.offer = (rec["rel"], rec["size"])
        else:
            self.flash.remove(_RUN)    # a cut after the download ended, before this went
        while True:
            while self.offer is None:
                await self.signal.wait()
            offer, self.offer = self.offer, None
            try:
                await self._handle(offer)
            except Paused as e:
                self.app.log("update: paused (%s)" % e)
            except ReleaseError as e:
                self._refuse(offer[0], e.args[0], e.args[1])
            except OSError as e:
                # A full filesystem (ENOSPC, errno 28) refuses the release; any other flash error
                # pauses it: the cabinet carries on, the next offer tries again.
                if e.args and e.args[0] == 28:
                    self._refuse(offer[0], "no_space", None)
                else:
                    self.app.log("update: paused, %s %s" % (type(e).__name__, e))
            except Restart:
                raise
            except Exception as e:  # a bug or no memory: refused with a reason, never a crash loop
                self._refuse(offer[0], "internal", type(e).__name__)
            self._want = self.ask = None

    def _emit(self, ev):
        self.app.emit(ev)

    def _refuse(self, rid, why, detail):
        self.flash.remove(_COSE)
        try:
            self.prog.save(rel=rid, ph="refused", why=why, det=detail)
        except OSError:  # a full flash: the event still goes (the outbox copes), nothing is kept
            self.prog.rec = {"seq": self.prog.rec["seq"], "rel": rid, "ph": "refused", "why": why,
                             "det": detail}
        self.flash.remove(_RUN)
        self._refused()

    def _refused(self):
        r = self.prog.rec
        ev = {"type": "update_refused", "release": r["rel"], "reason": r["why"]}
        if r.get("det"):
            ev["detail"] = str(r["det"])[:128]
        self._emit(ev)

    async def _handle(self, offer):
        rid, size = offer
        rec = self.prog.rec
        slots = self.app.slots
        if rec.get("rel") == rid:
            size = rec["size"]
            if rec["ph"] == "refused":
                self._refused()       # the server repeats offers until it sees a result
                return
            if rec["ph"] == "done" or (rec.get("slot") == slots.rec["slot"] and rec.get("ver") == slots.rec["ver"]):
                if rec["ph"] != "done":   # a cut came between the switch and this record
                    self.prog.save(ph="done")
                    self.flash.remove(_RUN)
                self.app.log("update: %s already installed" % rid)
                return
        if slots.rec["trial"]:
            # One update at a time: the release on trial is confirmed (or given up) first. Not
            # a refusal: the server repeats the offer, and a later one is taken up.
            self.app.log("update: %s waits, a release is on trial" % rid)
            return
        if rec.get("rel") != rid:
            self.flash.remove(_COSE)   # first: another release's bytes are never taken for these
            self.prog.save(rel=rid, size=size, ph="cose", i=0, ver=None, slot=None, why=None, det=None)
            self.flash.write(_RUN, b"")
            self._emit({"type": "update_offered", "release": rid, "size": size})
        self.rid = bytes.fromhex(rid)
        raw = await self._fetch_cose(size)
        m = await release.verify(raw, release.slots(self.app.cfg))
        raw = None
        ver = "%d.%d.%d" % m["version"]
        sm = {"version": ver}        # Slots takes versions as text
        for k in ("min_version", "may_replace"):
            if k in m:
                sm[k] = "%d.%d.%d" % m[k]
        release.accept(m, BOARD, version(slots.rec["ver"]) or (0, 0, 0), _mpy())
        why = slots.check(sm)
        if why:
            raise ReleaseError(why, None)
        files = m["files"]
        image = None
        for f in files:
            if f[0] == IMAGE:
                image = f
        if image is not None and self._image_slot() is None:
            raise ReleaseError("no_image_slot", None)
        if self.prog.rec["ph"] == "cose":
            self._emit({"type": "update_verified", "release": rid, "version": ver})
            why = slots.begin(sm)
            if why:
                raise ReleaseError(why, None)
            self.prog.save(ph="files", i=0, ver=ver, slot=slots.target())
        # The image (if any) last: its block hashes are a slot file fetched before it.
        order = [f for f in files if f is not image] + ([image] if image else [])
        while self.prog.rec["i"] < len(order):
            f = order[self.prog.rec["i"]]
            if f is image:   # the last one, never counted done: a resume checks it again,
                await self._fetch_image(f)   # as a reset after its set_boot() needs
                break
            else:
                await self._fetch_file(f)
            self.prog.save(i=self.prog.rec["i"] + 1)
        total = 0
        for f in files:
            total += f[1]
        self._emit({"type": "update_downloaded", "release": rid, "version": ver, "bytes": total})
        why = slots.commit(sm)
        if why:
            raise ReleaseError(why, None)
        self.flash.remove(_COSE)
        self.app.update_notes()        # update_installed, into the outbox
        self.prog.save(ph="done")
        self.flash.remove(_RUN)
        await self._drained()
        raise Restart("update %s installed: reset into slot %s" % (ver, slots.rec["slot"]))

    async def _fetch_cose(self, size):
        have = self.flash.read(_COSE) or b""
        if len(have) > size:
            self.flash.remove(_COSE)
            have = b""
        n = len(have)
        have = None
        while n < size:
            data = await self._get("release.cose", n, size - n)
            if not data:
                raise ReleaseError("malformed", "release.cose shorter than offered")
            self.flash.append(_COSE, data)
            n += len(data)
        return self.flash.read(_COSE)

    async def _fetch_file(self, f):
        path, size, digest = f
        d, name = self.app.slots.place(path)
        if d.read_at(name, 0, 1) is None and await self._copy_running(f, d, name):
            return
        for _ in range(_REDO + 1):
            h = hashlib.sha256()
            have = d.read(name) or b""    # after a reset: what is on flash already
            if len(have) > size:
                d.remove(name)
                have = b""
            h.update(have)
            n = len(have)
            have = None
            while n < size:
                data = await self._get(path, n, size - n)
                if not data:
                    raise ReleaseError("bad_file", path)   # the server's file is shorter than signed
                d.append(name, data)
                h.update(data)
                n += len(data)
            if size == 0:
                d.append(name, b"")        # an empty file is a file too
            if h.digest() == digest:
                return
            d.remove(name)                 # a bad block somewhere: fetch the file once more
        raise ReleaseError("bad_file", path)

    async def _copy_running(self, f, d, name):
        """A file the running version has byte for byte (same path, same size and SHA-256) is
        copied on the flash, not fetched: a fix release downloads only the files it changes
        (docs/updates.md "What a cabinet downloads"). One pass hashes the running copy, a second
        copies it and hashes again (what was read is what was checked); a mismatch in either
        leaves nothing and the file is fetched. True when copied."""
        path, size, digest = f
        src = self.app.slots.running(path)
        if src is None:
            return False
        sd, sname = src
        for copy in (False, True):
            h = hashlib.sha256()
            got = [0]
            parts = _parts(sd, sname, size, h, got)
            if copy:
                d.write(name, parts)     # atomic: the whole file or none after a power cut
            else:
                for _ in parts:
                    if not got[0] & 4095:
                        await sleep_ms(0)  # a flash block hashed: let an unlock in
            if got[0] != size or h.digest() != digest:
                d.remove(name)
                return False
        return True

    def _image_slot(self):
        f = getattr(self.app.hw, "image_slot", None)
        return f() if f else None

    async def _fetch_image(self, f):
        # The MicroPython image goes to the next OTA partition through aedgate.image (docs/
        # updates-install.md), checked per 4096-byte block against the signed block hashes.
        from aedgate.image import Image
        path, size, _ = f
        hashes = self.app.slots.place(path + ".sha")
        hashes = hashes[0].read(hashes[1])
        if hashes is None:
            raise ReleaseError("bad_image", "no block hashes")
        part = self._image_slot()
        if part is None:
            raise ReleaseError("no_image_slot", None)
        img = Image(part, hashes, size)
        hashes = None
        for _ in img.checking():   # what is on flash, re-hashed 4 KB at a time (1.5 MB in all):
            await sleep_ms(0)      # an unlock and the watchdog's feed go in between
        n = img.next_offset()
        if n < size and self.flash.read(_RUN) == BOOTING:
            # A reset after set_boot(), before the slot switch: the new image runs (on trial,
            # unconfirmed: App._healthy) with the old slot, and this partition is the old image.
            # Reset again: the bootloader goes back to the old image, and the next start finds
            # the new one whole in the other partition. Once only (the mark goes first).
            self.flash.write(_RUN, b"")
            raise Restart("new image with the old slot: back to the old image")
        while n < size and not self.app.image_confirmed:
            # Rule 1 (docs/updates-install.md): while the running image may still be on trial,
            # the partition written is the one the bootloader goes back to. Wait until the app
            # confirms it (online and healthy: App._healthy), as after every reset: a download a
            # power cut interrupted in the image goes on by itself, without a new offer.
            if self.offer is not None and self.offer[0] != self.rid.hex():
                raise Paused("another release offered")
            await self.signal.wait_ms(1000)
        bad = 0
        while n < size:
            data = await self._get(path, n, size - n)
            if not data:
                raise ReleaseError("bad_image", "short")
            nxt = img.write(n, data)
            if nxt <= n:
                bad += 1
                if bad > _REDO + 2:
                    raise ReleaseError("bad_image", "block at %d" % nxt)
            n = nxt
        self.flash.write(_RUN, BOOTING)   # App._healthy confirms no image until the slot switch
        img.finish()

    async def _get(self, file, offset, left):
        """One block of `file` from `offset` (at most `left` bytes): asked, then awaited."""
        app = self.app
        n = min(left, app.cfg["update_block"])
        ask = json.dumps({"v": 1, "ts": app.now(), "release": self.rid.hex(), "file": file,
                          "offset": offset, "len": n})
        for _ in range(_TRIES):
            self._got = None
            self._want = (self.rid, file, offset, n)
            self.sent_at = None
            self.ask = ask
            app.wake.set()
            while True:
                if self._got is not None:
                    data, self._got = self._got, None
                    return data
                if self.offer is not None and self.offer[0] != self.rid.hex():
                    raise Paused("another release offered")
                if self.sent_at is None:
                    await self.signal.wait_ms(_WAIT_MS)     # queued: acks, events, a window go first
                    continue
                left_ms = _WAIT_MS - ticks_diff(ticks_ms(), self.sent_at)
                if left_ms <= 0:
                    break
                await self.signal.wait_ms(left_ms)
        raise Paused("no block after %d asks" % _TRIES)

    async def _drained(self):
        """Until update_installed (and everything before it) has left the outbox, with no
        unlock window open: then the reset takes nothing away from a mission."""
        app = self.app
        while len(app.outbox) or app._acks or app.window.task is not None:
            await self.signal.wait_ms(100)  # a few polls, once per release


def _mpy():
    # The .mpy format this MicroPython loads (docs/updates.md); None on CPython (simulator).
    import sys
    mpy = getattr(sys.implementation, "_mpy", None)
    return None if mpy is None else mpy & 0xFF
