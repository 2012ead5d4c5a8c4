"""The block server: answers `aed/v1/<id>/update/get` with `aed/v1/<id>/update/block`
(docs/protocol.md, "Firmware updates"). A get is JSON
`{"v": 1, "ts": int, "release": "<16 hex>", "file": "release.cose" | <manifest path>,
"offset": int >= 0, "len": 1..1536}`; the block is strict CBOR
`[release (bstr 8), file (tstr), offset (uint), data (bstr <= len)]`: shorter than asked only at
the end of the file, empty at or after it.

Every get is checked before a byte is sent, and a bad one gets no answer at all (the cabinet
times out and asks again; a cabinet is never told more about the server than it asked): the
device id in the topic, the JSON shape and types, a release this server holds, a file that is
in that release's manifest, offset and len in range, and — when the server is given a filter —
a cabinet that takes part in the rollout. Refusals are counted by reason (`refused`).

Pure logic, no MQTT: `answer(topic, payload)` returns (device, block bytes) or None; the
controller publishes the block on the shard the get came from."""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Callable

import cbor2

from host_tools.rollout.release import ServedRelease

MAX_LEN = 1536
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")   # docs/protocol.md: device ids
RELEASE_RE = re.compile(r"[0-9a-f]{16}")
MAX_OFFSET = 1 << 32                             # no file of a release comes near 4 GiB
GET_TOPIC = "aed/v1/+/update/get"


def block_topic(device: str) -> str:
    return "aed/v1/%s/update/block" % device


def _int(v) -> bool:
    return type(v) is int  # bool is an int subclass: a JSON true is not an offset


class BlockServer:
    def __init__(self, releases: list[ServedRelease] = (),
                 allow: Callable[[str, ServedRelease], bool] | None = None):
        self.releases: dict[str, ServedRelease] = {r.id: r for r in releases}
        self.allow = allow
        self.served = 0
        self.bytes = 0
        self.refused: Counter = Counter()
        self.by_device: Counter = Counter()   # blocks served per cabinet (progress)

    def add(self, rel: ServedRelease) -> None:
        self.releases[rel.id] = rel

    def remove(self, release_id: str) -> None:
        self.releases.pop(release_id, None)

    def refuse(self, why: str) -> None:
        self.refused[why] += 1
        return None

    def answer(self, topic: str, payload: bytes):
        """(device, CBOR block) for a valid get, else None (counted in `refused`)."""
        parts = topic.split("/")
        if (len(parts) != 5 or parts[:2] != ["aed", "v1"] or parts[3:] != ["update", "get"]
                or not DEVICE_RE.fullmatch(parts[2])):
            return self.refuse("topic")
        device = parts[2]
        if len(payload) > 512:
            return self.refuse("too_large")
        try:
            get = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return self.refuse("not_json")
        if not isinstance(get, dict) or get.get("v") != 1 or not _int(get.get("v")):
            return self.refuse("malformed")
        rid, name, offset, n = get.get("release"), get.get("file"), get.get("offset"), get.get("len")
        if not (_int(get.get("ts")) and isinstance(rid, str) and isinstance(name, str)
                and _int(offset) and _int(n)):
            return self.refuse("malformed")
        if not RELEASE_RE.fullmatch(rid):
            return self.refuse("bad_release")
        rel = self.releases.get(rid)
        if rel is None:
            return self.refuse("unknown_release")
        data = rel.files.get(name)
        if data is None:
            return self.refuse("unknown_file")
        if not 0 <= offset < MAX_OFFSET or not 1 <= n <= MAX_LEN:
            return self.refuse("bad_range")
        if self.allow is not None and not self.allow(device, rel):
            return self.refuse("not_in_rollout")
        chunk = data[offset:offset + n]
        self.served += 1
        self.bytes += len(chunk)
        self.by_device[device] += 1
        return device, cbor2.dumps([rel.rid, name, offset, chunk])
