from aedgate.outbox import Outbox
from fwtest import temp_flash, wipe


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


def test_seq_recovered_from_event_files_when_counter_lost():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(5):
        ob.add({"type": "door_alarm"})
    f.write("seq.a", b"garbage")
    f.write("seq.b", b"garbage")
    assert Outbox(f).add({"type": "boot"})["seq"] == 6
    f.remove("seq.a")
    f.remove("seq.b")
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
    kept = [ob.get(s)["type"] for s in ob._pending]
    assert kept == ["door_alarm", "door_opened", "door_closed", "battery_low"]
    assert ob.get(3)["mission"] == "M-1"
    ob.add({"type": "mains_lost"})    # drops door_closed (seq 4)
    ob.add({"type": "lock_fault"})    # nothing routine left: grows past the limit
    assert [ob.get(s)["type"] for s in ob._pending] == ["door_alarm", "door_opened", "battery_low", "mains_lost", "lock_fault"]
    assert ob.dropped == 2
    wipe(f)


def test_payload_is_json_with_seq():
    import json
    f = temp_flash()
    ob = Outbox(f)
    ob.add({"type": "boot", "v": 1, "ts": 5})
    assert json.loads(ob.payload(1)) == {"type": "boot", "v": 1, "ts": 5, "seq": 1}
    wipe(f)


def test_one_rotten_counter_copy_loses_nothing():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(3):
        ob.add({"type": "door_alarm"})
    for s in (1, 2, 3):
        ob.remove(s)
    f.write("seq.a", b"99999:0")        # fails its check
    assert Outbox(f).add({"type": "boot"})["seq"] == 4
    f.write("seq.b", b"\xff\xfe")       # both copies rotten, but the last event file tells
    f.remove("seq.a")
    assert Outbox(f).add({"type": "boot"})["seq"] == 5
    wipe(f)


def test_rotten_event_file_is_set_aside_and_counted():
    f = temp_flash()
    ob = Outbox(f)
    for _ in range(4):
        ob.add({"type": "door_alarm"})
    f.write("ev.2", b'{"type": "door_al')          # torn (a non-atomic write, bit rot)
    f.write("ev.3", b'{"type": "x", "seq": 17}')    # valid JSON, but not event 3
    ob = Outbox(f)
    assert ob.corrupt == 2 and ob._pending == [1, 4]
    assert f.read("ev.2") is None
    assert ob.add({"type": "boot"})["seq"] == 5   # numbers are never reused
    wipe(f)


def test_old_single_counter_file_is_honoured():
    f = temp_flash()
    f.write("seq", b"41")  # written by firmware 0.1.0
    assert Outbox(f).add({"type": "boot"})["seq"] == 42
    wipe(f)
