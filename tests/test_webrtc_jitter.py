"""The agent's audio receive buffer (aiortc's JitterBuffer, shortened): real RTP packets in order and out of order."""

from __future__ import annotations

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from voice.transports.webrtc import AudioJitterBuffer

ARRIVALS = [100, 101, 103, 102, 104, 105, 106, 107]  # 102 arrives late


def _packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960, payload=bytes([seq % 256]))
    p._data = p.payload  # what aiortc's receiver sets (the depayloaded Opus frame) before add()
    return p


def _released(buffer, arrivals=ARRIVALS) -> list[int | None]:
    out = []
    for seq in arrivals:
        frame = buffer.add(_packet(seq))[1]
        out.append(None if frame is None else frame.timestamp // 960)
    return out


def test_in_order_packets_are_released_on_arrival_and_a_late_one_is_waited_for():
    released = _released(AudioJitterBuffer(hold=0))
    assert released[:2] == [100, 101]           # no wait for a following packet
    assert released[2] is None                  # 103 before 102: held
    assert [r for r in released if r is not None] == [100, 101, 102, 103, 104, 105, 106]  # order kept, none lost


@pytest.mark.parametrize("hold", [1, 2])
def test_hold_n_behaves_like_aiortc_prefetch_n(hold):
    assert _released(AudioJitterBuffer(hold=hold)) == _released(JitterBuffer(capacity=16, prefetch=hold))
