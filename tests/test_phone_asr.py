"""Phone audio and the recogniser (issue 20): the repeated-sentence guard, and bench.phone_wer's channel and WER.

The guard (models/asr.py) cuts whisper tiny's loops on 8 kHz audio, seen on the
SIP path as "Can you recommend a dog boat for the weekend? Can you recommend the
dog boat for a weekend? Can You recommend": the unfinished copy held the reply
back as an unfinished turn.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.asr import drop_repeated_sentences


@pytest.mark.parametrize("looped, whole", [
    ("Can you recommend a dog boat for the weekend? Can you recommend the dog boat for a weekend? "
     "Can You recommend", "Can you recommend a dog boat for the weekend?"),
    ("Can you recommend a dog boat for the weekend? Can you recommend adult boat for the weekends? "
     "Can you recommended a", "Can you recommend a dog boat for the weekend?"),
    ("What is the capital of France? What is the capital of France?", "What is the capital of France?"),
])
def test_a_looped_transcript_is_cut_after_its_first_copy(looped, whole):
    assert drop_repeated_sentences(looped) == whole


@pytest.mark.parametrize("text", [
    "It was followed by remorse. I tried to drive it away. I felt too sick.",  # human dev set references
    "Hold on, hold fast, hold out. Patience is genius.",
    "That sounds interesting. I'm going to give this a try.",
    "What is it? What is the capital of France?",  # same opening, another question
    "I think so. I think so too, yes.",  # a repeat that goes on
    "Yes. Yes.",
    "No, no. No, tell me more.",
    "Why is the sky blue?",
])
def test_speech_that_repeats_itself_on_purpose_is_left_alone(text):
    assert drop_repeated_sentences(text) == text


def test_the_phone_channel_is_the_sip_ports_upsampler_on_g711_audio():
    """bench.phone_wer's g711u channel: 8 kHz mu-law round trip, then the SIP port's EdgeUpsampler
    frame by frame; same length out as in, band-limited to 4 kHz, speech-level energy kept."""
    from bench import phone_wer as pw

    rate = pw.RATE
    t = np.arange(rate) / rate
    x = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    y = pw.CHANNELS["g711u"](x)
    assert len(y) == len(x)
    spec = np.abs(np.fft.rfft(y[rate // 4: 3 * rate // 4]))
    freqs = np.fft.rfftfreq(rate // 2, 1 / rate)
    low = spec[np.argmin(np.abs(freqs - 440))]
    high = spec[np.argmin(np.abs(freqs - 6000))]
    assert high < 0.01 * low  # the 6 kHz tone is gone, the 440 Hz one is there
    assert low > 0.5 * np.abs(np.fft.rfft(x[rate // 4: 3 * rate // 4]))[np.argmin(np.abs(freqs - 440))]


def test_wer_counts_edits_over_reference_words_after_normalising():
    from bench import phone_wer as pw

    norm = pw.normaliser()
    pairs = [(norm("What's the capital of France?"), norm("what is the capital and friends")),
             (norm("Why is the sky blue?"), norm("Why is the sky blue"))]
    w, edits, words = pw.wer(pairs)
    assert (edits, words) == (2, 11)
    assert w == pytest.approx(2 / 11)
