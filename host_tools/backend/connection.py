"""Broker connection options, in one place for every host tool and backend: the URL (mqtt:// or
mqtts://), the CA file that verifies an mqtts:// broker, the user, and the password — read from
a file or the environment, never only from a command line (where `ps` shows it to anyone).

`connect()` returns a paho-mqtt client whose first CONNACK has been checked: a broker that
refuses the credentials gives a one-line BrokerAuthError naming the broker and the user (not a
silent retry that later looks like an offline cabinet).

select() ceiling: paho's threaded loop (`loop_start()`) waits on its socket with select(), which
cannot watch a file descriptor >= 1024 (the thread dies with "filedescriptor out of range").
This library runs one paho client (one socket, one thread) per broker shard, so a process that
uses it must hold few descriptors: the simulator's fleet (one socket per cabinet) runs it in a
process of its own (simulator/bench/soak.py, simulator/bench/backend.py).
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass, replace

from host_tools import brokerurl

PASSWORD_ENV = "AEDGATE_BROKER_PASSWORD"
USER_ENV = "AEDGATE_BROKER_USER"
CA_ENV = "AEDGATE_BROKER_CA"


class BrokerError(Exception):
    """A one-line reason the broker could not be used; `code` is the tool's exit status."""

    code = 3


class BrokerAuthError(BrokerError):
    """The broker answered, and refused these credentials (CONNACK 4 or 5)."""

    code = 4


@dataclass(frozen=True)
class BrokerOptions:
    """How to reach one broker (one shard). `password` is the secret itself; build it with
    `from_args()` or `read_password()`, which take it from a file or the environment."""

    url: str
    ca_file: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        host, port, tls = brokerurl.parse(self.url, tls_ok=True)  # ValueError: one line
        object.__setattr__(self, "_hpt", (host, port, tls))
        if self.password is not None and not self.user:
            raise ValueError("a broker password needs a user name (--user)")

    @property
    def host(self) -> str:
        return self._hpt[0]

    @property
    def port(self) -> int:
        return self._hpt[1]

    @property
    def tls(self) -> bool:
        return self._hpt[2]

    def with_url(self, url: str) -> "BrokerOptions":
        """The same credentials on another shard."""
        return replace(self, url=url)

    def describe(self) -> str:
        """`mqtts://host:8883 as dispatch` — for messages (never the password)."""
        return "%s://%s:%d%s" % ("mqtts" if self.tls else "mqtt", self.host, self.port,
                                 (" as %s" % self.user) if self.user else " (anonymous)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> list["BrokerOptions"]:
        """One BrokerOptions per shard from `add_broker_arguments`' options (and environment)."""
        urls = [u.strip() for u in args.broker.split(",") if u.strip()]
        user = args.user or os.environ.get(USER_ENV) or None
        password = read_password(args.password_file)
        ca = args.ca or os.environ.get(CA_ENV) or None
        if ca and not os.path.isfile(ca):
            raise ValueError("CA file %s does not exist" % ca)
        if password is not None and not user:
            raise ValueError("a broker password was given (%s) but no --user"
                             % ("--password-file" if args.password_file else PASSWORD_ENV))
        out = [cls(u, ca, user, password) for u in urls]
        if not out:
            raise ValueError("--broker needs at least one mqtt://host:port")
        return out


def read_password(path: str | None, env: str = PASSWORD_ENV) -> str | None:
    """The password from `path` (first line; '-' reads stdin) or else from the environment."""
    if path:
        try:
            if path == "-":
                import sys
                text = sys.stdin.readline()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.readline()
        except OSError as e:
            raise ValueError("cannot read password file %s: %s" % (path, e.strerror or e)) from None
        text = text.rstrip("\r\n")
        if not text:
            raise ValueError("password file %s is empty" % path)
        return text
    value = os.environ.get(env)
    return value if value else None


def add_broker_arguments(p: argparse.ArgumentParser, account: str, shards: bool = False,
                         url_option: bool = True) -> None:
    """The connection options every host tool takes (the same names everywhere). A tool whose
    --broker sits in a group of its own passes url_option=False and adds it itself."""
    g = p.add_argument_group(
        "broker connection",
        "The password is read from --password-file or $%s, never from the command line. "
        "$%s and $%s stand in for --user and --ca." % (PASSWORD_ENV, USER_ENV, CA_ENV))
    if url_option:
        g.add_argument("--broker", required=True, metavar="URL",
                       help="mqtt://host:1883 or mqtts://host:8883%s"
                            % (" (comma-separated: one per broker shard)" if shards else ""))
    g.add_argument("--ca", metavar="FILE", help="CA certificate (PEM) that signed an mqtts:// broker's "
                                                "certificate (default: the system's CAs)")
    g.add_argument("--user", "--username", dest="user", metavar="NAME",
                   help="broker user name (the %s account)" % account)
    g.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the broker password ('-' reads stdin)")


def unique_client_id(role: str, user: str | None = None) -> str:
    """A client id no other running tool uses: MQTT lets one client id hold one connection, so a
    second tool with the same id would disconnect the first (and a clean one would wipe its
    session). Starts with the user name, which a broker may require (docs/broker.md)."""
    return "%s-%s-%s" % (user or role, socket.gethostname()[:20], secrets.token_hex(4))


# CONNACK return codes of MQTT 3.1.1 (§3.2.2.3) and what to tell a person.
_REFUSED = {1: "unacceptable protocol version", 2: "client id rejected",
            3: "server unavailable", 4: "bad user name or password", 5: "not authorised"}
_V5_TO_311 = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def connack_code(reason) -> int:
    """paho 2.x reports a 3.1.1 CONNACK code as a v5 ReasonCode; give back the 3.1.1 number."""
    value = getattr(reason, "value", reason)
    return _V5_TO_311.get(value, value)


def refused_message(opts: BrokerOptions, code: int) -> str:
    what = _REFUSED.get(code, "refused")
    hint = ""
    if code in (4, 5):
        hint = (": check the user and password (--user, --password-file or $%s)" % PASSWORD_ENV
                if opts.user else ": this broker needs a user name and password (--user, "
                "--password-file)")
    return "broker %s refused the connection: %s (CONNACK %d)%s" % (opts.describe(), what, code, hint)


def connect(opts: BrokerOptions, client_id: str, *, clean_session: bool = True,
            on_message=None, on_connect=None, manual_ack: bool = False, timeout: float = 10.0,
            nodelay: bool = False, keepalive: int = 30, max_inflight: int | None = None):
    """A paho client connected to `opts`, its network thread running, its first CONNACK
    accepted. Raises BrokerAuthError (refused) or BrokerError (unreachable, TLS, no answer).
    `on_connect(client, session_present)` runs on every (re)connect that the broker accepts —
    subscribe there, so subscriptions come back after a clean-session reconnect.
    `max_inflight`: QoS 1 messages this client may have sent and not yet seen acknowledged
    (paho's default is 20; the update server, which answers thousands of cabinets, raises it)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean_session, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)  # only before connecting (paho 2)
    if opts.user:
        client.username_pw_set(opts.user, opts.password)
    if opts.tls:
        try:
            client.tls_set(ca_certs=opts.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise BrokerError("cannot load CA file %s: %s" % (opts.ca_file, e)) from None
    first = {"code": None}
    done = threading.Event()

    def _on_connect(c, userdata, flags, reason, properties=None):
        code = connack_code(reason)
        if not done.is_set():
            first["code"] = code
            done.set()
        if code == 0:
            if nodelay:
                s = c.socket()
                if s is not None:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if on_connect:
                on_connect(c, bool(getattr(flags, "session_present", False)))
        else:
            client.last_refusal = refused_message(opts, code)

    client.on_connect = _on_connect
    client.last_refusal = None
    if on_message:
        client.on_message = on_message
    client.reconnect_delay_set(0.2, 5)
    try:
        client.connect(opts.host, opts.port, keepalive=keepalive)
    except ssl.SSLCertVerificationError as e:
        raise BrokerError("broker %s: TLS certificate not trusted (%s); give the CA with --ca"
                          % (opts.describe(), e.verify_message)) from None
    except ssl.SSLError as e:
        raise BrokerError("broker %s: TLS failed: %s" % (opts.describe(), e.reason or e)) from None
    except OSError as e:
        raise BrokerError("cannot reach broker %s: %s" % (opts.describe(), e.strerror or e)) from None
    client.loop_start()
    if not done.wait(timeout):
        _stop(client)
        raise BrokerError("broker %s: no CONNACK within %g s" % (opts.describe(), timeout))
    code = first["code"]
    if code != 0:
        _stop(client)
        err = BrokerAuthError if code in (4, 5) else BrokerError
        raise err(refused_message(opts, code))
    return client


def _stop(client) -> None:
    client.loop_stop()
    try:
        client.disconnect()
    except Exception:  # noqa: BLE001  (already gone: nothing to close)
        pass
