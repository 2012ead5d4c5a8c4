from aedgate.outbox import Outbox
from fwtest import FullFlash, temp_flash, wipe


def _segments(f):
    """Segment files: full ones in "ob", the open one in "obo"."""
    return sorted(int(n) for d in ("ob", "obo") for n in f.sub(d).names() if n.isdigit())


def _home(f, first):
    """The folder that holds segment `first`."""
    return f.sub("ob") if f.sub("ob").read(str(first)) is not None else f.sub("obo")


def test_seq_grows_by_one_across_reboots():
    f = temp_flash()
    ob = Outbox(f)
    assert [ob.add({"type": "boot"})["seq"] for _ in range(3)] == [1, 2, 3]
    ob.remove(1)
    ob.remove(2)
    ob = Outbox(f)  # reboot: 3 still pending, seq continues
    assert len(ob) == 1 and ob.oldest() == 3
    assert ob.add({"type": "door_opened"})["seq"] == 4
    wipe(f)


def test_an_empty_outbox_keeps_seq_and_acked_segments_are_deleted():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(100):
        ob.add({"type": "door_alarm", "ts": 1795000000})
    assert len(_segments(f)) >= 2         # at most one block each
    for s in ob.pending():
        ob.remove(s)
    assert len(ob) == 0 and _segments(f) == [_segments(f)[-1]]  # only the newest is kept
    ob = Outbox(f)
    assert len(ob) == 0 and ob.oldest() is None
    assert ob.add({"type": "boot"})["seq"] == 101
    wipe(f)


def test_lost_done_file_sends_again_never_loses_or_reuses():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(5):
        ob.add({"type": "door_alarm"})
    ob.remove(1)
    ob.remove(2)
    f.sub("obs").write("done", b"garbage")     # rot: which were acknowledged is unknown
    ob = Outbox(f)
    assert ob.pending() == [1, 2, 3, 4, 5]    # sent again: duplicates, never loss
    assert ob.add({"type": "boot"})["seq"] == 6
    f.sub("obs").remove("done")
    assert Outbox(f).add({"type": "boot"})["seq"] == 7
    wipe(f)


def test_full_outbox_drops_routine_never_alarms():
    f = temp_flash()
    ob = Outbox(f, limit=4)
    ob.add({"type": "door_alarm"})
    ob.add({"type": "door_opened"})
    ob.add({"type": "door_opened", "mission": "M-1"})
    ob.add({"type": "door_closed"})
    ob.add({"type": "battery_low"})   # full: drops the first routine event (seq 2)
    assert ob.dropped == 1
    kept = [ob.get(s)["type"] for s in ob.pending()]
    assert kept == ["door_alarm", "door_opened", "door_closed", "battery_low"]
    assert ob.get(3)["mission"] == "M-1"
    ob.add({"type": "mains_lost"})    # drops door_closed (seq 4)
    ob.add({"type": "lock_fault"})    # nothing routine left: grows past the limit
    assert [ob.get(s)["type"] for s in ob.pending()] == ["door_alarm", "door_opened", "battery_low", "mains_lost", "lock_fault"]
    assert ob.dropped == 2
    assert Outbox(f, limit=4).pending() == [1, 3, 5, 6, 7]   # the drops are remembered
    ob = Outbox(f, limit=4)
    ob.add({"type": "temp_ok"})                  # seq 8, routine
    ob = Outbox(f, limit=4)                      # which ones are routine is on flash too
    ob.add({"type": "door_alarm"})
    assert ob.pending() == [1, 3, 5, 6, 7, 9] and ob.dropped == 1
    wipe(f)


def test_payload_is_json_with_seq():
    import json
    f = temp_flash()
    ob = Outbox(f)
    ob.add({"type": "boot", "v": 1, "ts": 5})
    assert json.loads(ob.payload(1)) == {"type": "boot", "v": 1, "ts": 5, "seq": 1}
    wipe(f)


def test_rotten_record_is_reported_once_and_numbers_never_reused():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(4):
        ob.add({"type": "door_alarm"})
    seg = _home(f, 1)
    data = bytearray(seg.read("1"))
    starts = [k for k in range(len(data) - 1) if data[k:k + 2] == b"\xae\xd1"]
    data[starts[1] + 14] ^= 0x01                # bit rot inside event 2
    data[starts[2] + 20] ^= 0x40                # and in event 3
    seg.write("1", bytes(data))
    ob = Outbox(f)
    assert ob.corrupt == 2 and ob.pending() == [1, 4]
    assert ob.add({"type": "boot"})["seq"] == 5   # numbers are never reused
    assert Outbox(f).corrupt == 0                 # reported once
    wipe(f)


def test_rotten_header_skips_to_the_next_record():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(3):
        ob.add({"type": "door_alarm"})
    seg = _home(f, 1)
    data = bytearray(seg.read("1"))
    k = data.find(b"\xae\xd1", 1)              # the header of record 2
    data[k] = 0
    data[k + 2] ^= 0xFF                         # its length is garbage too
    seg.write("1", bytes(data))
    ob = Outbox(f)
    assert ob.corrupt == 1 and ob.pending() == [1, 3]
    wipe(f)


def test_torn_append_loses_only_the_event_never_handed_out():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(3):
        ob.add({"type": "door_alarm"})
    seg = _home(f, 1)
    full = seg.read("1")
    seg.append("1", full[:20])                  # a power cut in the middle of emitting seq 4
    ob = Outbox(f)
    assert ob.corrupt == 0 and ob.pending() == [1, 2, 3]
    assert ob.add({"type": "boot"})["seq"] == 4   # never sent, so its number is free
    assert _segments(f) == [1, 4]               # not appended after the torn bytes
    ob = Outbox(f)
    assert ob.pending() == [1, 2, 3, 4] and ob.get(4)["type"] == "boot"
    wipe(f)


def test_old_counter_files_are_honoured():
    f = temp_flash()
    f.write("seq", b"41")  # written by firmware 0.1.0
    assert Outbox(f).add({"type": "boot"})["seq"] == 42
    f = temp_flash()
    f.write("seq.a", b"99999:0")                # fails its check
    f.write("seq.b", b"%d:%d" % (57, 57 ^ 0x5A5A5A5A))
    f.write("ev.58", b'{"type": "boot", "seq": 58}')
    assert Outbox(f).add({"type": "boot"})["seq"] == 59
    wipe(f)


def test_full_filesystem_drops_routine_first_and_never_raises():
    f = temp_flash()
    ob = Outbox(f)
    ob.add({"type": "door_alarm"})
    flash = FullFlash(f, room=0)                # something else filled the filesystem
    ob = Outbox(flash)                          # boots: no exception, no room for a spare
    assert ob.add({"type": "boot"})["seq"] == 2  # the spare blocks are given up for it
    assert ob.get(2)["type"] == "boot" and f.sub("obs").read("spare") is None
    flash.room = 0                              # and that room is used up too
    assert "seq" not in ob.add({"type": "door_opened"})   # routine: dropped, counted
    assert ob.dropped == 1
    ev = ob.add({"type": "lock_fault"})          # an alarm is kept (in RAM) and sent
    assert ev["seq"] == 3 and ob.pending() == [1, 2, 3]
    assert ob.get(3)["type"] == "lock_fault"
    for s in ob.pending():
        ob.remove(s)
    assert len(ob) == 0
    wipe(f)


def test_full_filesystem_drops_routine_segments_to_make_room():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(120):
        ob.add({"type": "door_opened", "ts": 1795000000})
    flash = FullFlash(f, room=0)
    ob = Outbox(flash)
    flash.sub("obs").remove("spare")             # already used up
    flash.room = 0
    ev = ob.add({"type": "door_alarm"})
    assert ev["seq"] == 121 and ob.dropped >= 1
    assert 121 in ob.pending() and ob.get(121)["type"] == "door_alarm"
    assert 1 not in ob.pending()                 # the oldest routine segment went
    wipe(f)


def test_torn_first_record_of_a_segment_is_replaced_not_appended_to():
    f = temp_flash()
    ob = Outbox(f)
    ob.add({"type": "door_alarm"})
    seg = _home(f, 1)
    seg.append("2", seg.read("1")[:9])          # cut while starting segment 2 with event 2
    ob = Outbox(f)
    assert ob.pending() == [1]
    for _ in range(3):
        ob.add({"type": "door_alarm"})
    assert [ob.get(s)["seq"] for s in ob.pending()] == [1, 2, 3, 4]   # readable before a reboot
    ob = Outbox(f)                              # and after it: none lost
    assert ob.pending() == [1, 2, 3, 4] and [ob.get(s)["seq"] for s in ob.pending()] == [1, 2, 3, 4]
    wipe(f)


def test_events_left_by_the_old_one_file_per_event_outbox_are_sent_then_removed():
    f = temp_flash()
    f.write("seq.a", b"%d:%d" % (7, 7 ^ 0x5A5A5A5A))   # firmware 0.1.x's files
    f.write("seq.b", b"%d:%d" % (7, 7 ^ 0x5A5A5A5A))
    f.write("ev.5", b'{"type": "door_alarm", "seq": 5, "v": 1, "ts": 9}')
    f.write("ev.6", b'{"type": "door_al')             # rotten: reported
    f.write("ev.7", b'{"type": "lock_fault", "seq": 7, "v": 1, "ts": 9}')
    ob = Outbox(f)
    assert ob.corrupt == 1 and ob.pending() == [5, 7] and len(ob) == 2
    assert ob.add({"type": "boot"})["seq"] == 8
    assert ob.oldest() == 5 and ob.get(5)["type"] == "door_alarm"
    ob.remove(5)
    assert f.read("ev.5") is None
    ob = Outbox(f)
    assert ob.pending() == [7, 8] and ob.corrupt == 0
    assert ob.add({"type": "boot"})["seq"] == 9
    wipe(f)


def test_heap_pieces_stay_small():
    # Issue 10: large temporary blocks fragment the ESP32's small, non-moving heap. The first
    # boot's 8 KB spare file was one block of zeros; publishing read the whole open segment (up
    # to 4 KB) again after every append. Now: pieces of at most 512 bytes, and a publish reads
    # its record only.
    import json
    from fwtest import Recorder
    f = Recorder(temp_flash())
    ob = Outbox(f)
    assert f.largest_part <= 512, f.largest_part
    for i in range(40):   # about a segment's worth: the open one grows towards 4 KB
        ob.add({"type": "door_opened", "ts": 1800000000 + i, "pad": "x" * 60})
    for seq in ob.pending():
        del f.reads[:]
        ev = json.loads(ob.payload(seq))
        assert ev["seq"] == seq
        rec = 12 + len(json.dumps(ev))   # header + the event's JSON
        assert sum(n for _, n in f.reads) <= rec + 4, (seq, f.reads, rec)
        ob.remove(seq)
    assert len(ob) == 0
    wipe(f.inner)
