# `ntptime` for the virtual device. The ESP32 firmware has micropython-lib's ntptime frozen in
# (ports/esp32/boards/manifest.py -> bundle-networking -> ntptime); this is our own module with
# the same interface and behaviour (docs/twin.md): globals `host` and `timeout` (1 s), time()
# sends one NTPv3 client request (first byte 0x1B) over UDP, reads the transmit timestamp's
# seconds (bytes 40..43), no retry, no check of the answer; a missing answer raises
# OSError(ETIMEDOUT). settime() writes the result to machine.RTC().datetime() in UTC with
# microseconds 0. The one difference: every host name resolves to the harness's SNTP responder
# on loopback (aedsim vdev answers for whatever NTP host a cabinet is configured with).
import socket
import struct

import _vdevrt

host = "pool.ntp.org"
timeout = 1


def time():  # noqa: F811 -- the module's function, as in micropython-lib
    import time as _time
    ntp_query = bytearray(48)
    ntp_query[0] = 0x1B
    addr = _vdevrt.sntp_addr(host)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(ntp_query, addr)
        msg = s.recv(48)
    finally:
        s.close()
    val = struct.unpack("!I", msg[40:44])[0]
    # 2036 rollover, as upstream: before 2024-01-01 in NTP seconds means the next era
    MIN_NTP_TIMESTAMP = 3913056000
    if val < MIN_NTP_TIMESTAMP:
        val += 0x100000000
    EPOCH_YEAR = _time.gmtime(0)[0]
    if EPOCH_YEAR == 2000:
        NTP_DELTA = 3155673600  # 1900-01-01 to 2000-01-01
    elif EPOCH_YEAR == 1970:
        NTP_DELTA = 2208988800  # 1900-01-01 to 1970-01-01
    else:
        raise Exception("Unsupported epoch: {}".format(EPOCH_YEAR))
    return val - NTP_DELTA


def settime():
    import machine
    import time as _time
    t = time()
    tm = _time.gmtime(t)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
