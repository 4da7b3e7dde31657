"""``halfclose device``: the app on an Android device, captured, analysed live, fixed and compared.

:mod:`.compare` (pure: following a pcap stream, the before/after comparison) and :mod:`.session`
(adb: the app's uid and process, the streamed capture, the fix put in place and removed).
"""

from halfclose.device.compare import Comparison, PcapTail, compare
from halfclose.device.session import DeviceSession, parse_status_uid

__all__ = ["Comparison", "DeviceSession", "PcapTail", "compare", "parse_status_uid"]
