# The locate beacon of an open unlock window: the LED blinks, and while the door is still closed
# the siren chirps every few seconds, so the volunteer finds the right cabinet.
from aedgate.compat import sleep_ms


class Beacon:
    def __init__(self, hw, cabinet):
        self.led = hw.led
        self.siren = hw.siren
        self.cabinet = cabinet

    async def run(self):
        led, siren = self.led, self.siren
        n = 0
        while True:
            if led:
                led.value(n % 2 == 0)
            if siren and n % 6 == 0 and self.cabinet.door == "closed":
                siren.value(1)
                await sleep_ms(60)
                siren.value(0)
            n += 1
            await sleep_ms(500)

    def off(self):
        if self.led:
            self.led.value(0)
