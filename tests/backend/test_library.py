"""host_tools.backend against real Mosquitto, with real paho publishers as cabinets."""
import json
import time

import pytest

from host_tools.backend import (BrokerAuthError, BrokerError, BrokerOptions, CommandSender,
                                EventLedger, FleetSubscriber, connect)
from tests.backend.conftest import PASSWORDS, Cabinet, state, wait_until
from tests.fixtures import Mosquitto


def test_ledger_redelivered_events_dropped_cannot_cancel_a_real_gap():
    led = EventLedger(base=1)
    for s in (1, 2, 3):
        assert led.add("a", {"seq": s, "type": "boot"})
    # seqs 4 and 5 were dropped by the cabinet's full outbox, and it said so in seq 6 ...
    assert led.add("a", {"seq": 6, "type": "events_dropped", "count": 2})
    assert not led.add("a", {"seq": 6, "type": "events_dropped", "count": 2})  # ... twice (QoS 1)
    assert led.add("a", {"seq": 8, "type": "boot"})  # seq 7 genuinely lost
    assert led.missing("a") == [4, 5, 7]
    assert (led.dropped_reported, led.duplicates, led.unexplained()) == (2, 1, 1)
    # another cabinet's drops never hide this cabinet's loss
    led.add("b", {"seq": 1, "type": "events_dropped", "count": 5})
    assert led.unexplained() == 1
    # what is still in the outbox is not lost
    assert led.unexplained("a", still_queued=lambda d: {7}) == 0


def test_ledger_out_of_order_and_late_join():
    led = EventLedger(base=None)
    for s in (100, 102, 99, 101, 99):
        led.add("x", {"seq": s, "type": "boot"})
    assert led.missing("x") == [] and led.unique() == 4 and led.duplicates == 1
    led.add("x", {"seq": 97, "type": "boot"})
    assert led.missing("x") == [98]


def test_fleet_across_two_shards_dedup_gaps_latest_state(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with Mosquitto(tmp_path / "a") as s1, Mosquitto(tmp_path / "b") as s2:
        feed = FleetSubscriber([BrokerOptions(s1.url), BrokerOptions(s2.url)], "t-reg", base=1).start()
        seen = []
        feed.listen(lambda m: seen.append((m.device, m.kind, m.shard)))
        a, b = Cabinet(s1.url, "cab-a"), Cabinet(s2.url, "cab-b")
        try:
            a.pub("status", {"online": True, "fw": "0.3.0", "reset_cause": "power_on", "boot_ts": int(time.time())}, retain=True)
            a.pub("state", state(), retain=True)
            a.pub("state", state(door="open"), retain=True)
            for s in (1, 2, 2, 4):
                a.event(s)
            b.event(1, "events_dropped", count=3, reason="overflow")
            b.event(1, "events_dropped", count=3, reason="overflow")  # redelivered
            b.event(5)
            a.pub("event", {"seq": "x", "type": "boot"})  # breaks the schema
            b.c.publish("aed/v1/cab-b/event", b"{not json", 1).wait_for_publish(5)
            fleet = feed.fleet
            assert wait_until(lambda: fleet.counters["messages"] >= 12), fleet.counters
            with feed.lock:
                assert fleet.state["cab-a"]["door"] == "open"
                assert fleet.online() == 1
                assert fleet.counters["invalid"] == 2, list(fleet.invalid)
                assert fleet.ledger.duplicates == 2
                assert fleet.ledger.missing("cab-a") == [3]
                assert fleet.ledger.missing("cab-b") == [2, 3, 4]
                assert fleet.ledger.dropped_reported == 3
                assert fleet.gaps == 1  # cab-a's seq 3; cab-b's three are explained
                assert {x[2] for x in seen if x[0] == "cab-b"} == {1}
        finally:
            a.close(), b.close(), feed.close()


def test_durable_session_and_manual_ack_redeliver_what_was_not_acknowledged(tmp_path):
    with Mosquitto(tmp_path) as broker:
        opts = BrokerOptions(broker.url)
        feed = FleetSubscriber([opts], "t-durable", durable=True, manual_ack=True, base=1).start()
        got = []
        feed.listen(lambda m: got.append(m))  # never acks: as if the process died before commit
        cab = Cabinet(broker.url)
        try:
            cab.event(1)
            cab.event(2)
            assert wait_until(lambda: len(got) == 2)
            feed.close()
            cab.event(3)  # while the subscriber is away
            again = FleetSubscriber([opts], "t-durable", durable=True, manual_ack=True, base=1)
            acked = []
            again.listen(lambda m: (acked.append(m.body["seq"]), m.ack()))
            again.start()
            assert wait_until(lambda: sorted(acked) == [1, 2, 3]), acked
            again.close()
            third = FleetSubscriber([opts], "t-durable", durable=True, manual_ack=True, base=1)
            late = []
            third.listen(lambda m: late.append(m.body["seq"]))
            third.start()
            time.sleep(0.5)
            assert late == []  # all acknowledged: nothing comes back
            third.close()
        finally:
            cab.close()


def test_bad_password_is_a_one_line_error_naming_broker_and_user(secured_mosquitto):
    opts = BrokerOptions(secured_mosquitto.url, user="dispatch", password="wrong")
    t0 = time.monotonic()
    with pytest.raises(BrokerAuthError) as e:
        connect(opts, "dispatch-t1")
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "dispatch" in msg and str(secured_mosquitto.port) in msg
    assert "CONNACK 5" in msg or "CONNACK 4" in msg
    with pytest.raises(BrokerAuthError, match="needs a user name"):
        connect(BrokerOptions(secured_mosquitto.url), "anon-t1")


def test_unreachable_broker_says_so(tmp_path):
    from tests.fixtures import free_port
    with pytest.raises(BrokerError, match="cannot reach broker mqtt://127.0.0.1:%d" % 0 if False else "cannot reach"):
        connect(BrokerOptions("mqtt://127.0.0.1:%d" % free_port()), "x", timeout=3)


def test_acks_matched_to_commands_by_cti_and_follow_refused_under_dispatch_acl(secured_mosquitto):
    from host_tools import tokens
    url = secured_mosquitto.url
    sender = CommandSender(BrokerOptions(url, user="dispatch", password=PASSWORDS["dispatch"])).start()
    cab = Cabinet(url, "cab-0001", "cab-0001", PASSWORDS["cab-0001"])
    answers = []

    def on_cmd(c, u, m):
        from host_tools.backend.commands import token_cti
        answers.append(m.payload)
        n = len(answers)
        body = ({"cmd": "unlock", "result": "accepted", "cti": token_cti(m.payload), "mission": "M%d" % n}
                if n != 2 else {"cmd": "unlock", "result": "rejected", "reason": "bad_mac"})
        c.publish("aed/v1/cab-0001/ack", json.dumps({"v": 1, "ts": int(time.time()), **body}), 1)
    cab.c.on_message = on_cmd
    cab.c.subscribe("aed/v1/cab-0001/cmd/#", 1)
    time.sleep(0.3)
    try:
        key = bytes(32)
        sent = [sender.send("cab-0001", "unlock", tokens.mint(key, "cab-0001", "M%d" % i, 60), "M%d" % i)
                for i in (1, 2, 3)]
        acks = [sender.wait(s, 5) for s in sent]
        assert [a["result"] for a in acks] == ["accepted", "rejected", "accepted"]
        assert acks[0]["cti"] == sent[0].cti and acks[2]["cti"] == sent[2].cti
        assert sender.counters == {"sent": 3, "answered": 3, "unmatched_acks": 0, "timeouts": 0}
        cab.pub("status", {"online": True, "fw": "0.3.0", "reset_cause": "power_on",
                           "boot_ts": int(time.time())}, retain=True)
        why = sender.follow("cab-0001", timeout=1.5)
        assert why and "dispatch" in why and "may not read" in why
        reg = CommandSender(BrokerOptions(url, user="registry", password=PASSWORDS["registry"])).start()
        try:
            assert reg.follow("cab-0001") is None  # the registry account may read it
        finally:
            reg.close()
    finally:
        cab.close(), sender.close()
