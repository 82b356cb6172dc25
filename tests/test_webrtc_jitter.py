"""The agent's WebRTC input path: aiortc's JitterBuffer, shortened (real RTP packets in order and
out of order), and the 20 ms re-cutting of what PyAV's resampler gives pipecat."""

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


def test_resampled_opus_frames_reach_the_pipeline_without_a_frame_of_delay():
    """aiortc decodes Opus to 20 ms of 48 kHz stereo; pipecat resamples it with PyAV to 16 kHz mono.

    The resampler's first output is short by its filter delay. Each later
    packet must still come out as one whole 20 ms frame at once, not wait for
    the next packet to complete it (that cost every word 19 ms).
    """
    import av
    import numpy as np
    from av.audio.resampler import AudioResampler

    from voice.audio import FrameChunker

    resampler = AudioResampler(format="s16", layout="mono", rate=16000)
    chunker = FrameChunker()
    t = np.arange(48000) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype(np.int16)
    per_push, sent = [], []
    for i in range(50):
        pcm = np.repeat(tone[i * 960:(i + 1) * 960, None], 2, axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate = 48000
        got = b"".join(bytes(f.to_ndarray().astype(np.int16).tobytes()) for f in resampler.resample(frame))
        sent.append(got)
        per_push.append(chunker.push(got))
    assert len(sent[0]) < 640  # the filter delay this is about
    assert all(len(frames) == 1 and len(frames[0]) == 640 for frames in per_push)
    out = np.frombuffer(b"".join(f for frames in per_push for f in frames), dtype=np.int16)
    received = np.frombuffer(b"".join(sent), dtype=np.int16)
    pad = len(out) - len(received)
    assert 0 < pad < 320 and not out[:pad].any()  # silence in front, nothing lost or reordered
    assert np.array_equal(out[pad:], received)
