# Run by the unix port (`micropython -i _vdevboot.py`) at every (re)start of the virtual device.
import _vdevrt
_vdevrt.boot(globals())
