"""Synthetic Full-Duplex-Bench v1 data with exact ground truth.

Each sample is one espeak-ng speaker (voice, speed, pitch and level drawn per
sample; none of them is the agent's Piper voice) whose phrases are synthesized
one at a time, trimmed to where its 10 ms RMS envelope is within 40 dB of the
phrase's peak, and laid end to end
with numpy silences, so every timestamp in the metadata is the exact sample
position of a phrase edge. Optional low background noise (-65..-50 dBFS RMS) is
added over the whole file afterwards. Output is 16 kHz mono 16-bit input.wav.

Timelines (seconds; ``lead`` is 0.3-0.8 s of silence before the first word):

- pause_handling: lead, first half of a question ending on an incomplete
  clause, a pause of 1.0-2.0 s, the second half, then 0.2 s of silence.
  pause.json = the pause [end of first half, start of second half]. The file
  stops right after the user finishes because FDB scores take-over on the whole
  output, which is as long as the input: a reply *after* the question would
  otherwise count as taking over during the pause.
- smooth_turn_taking: lead, a complete question (every third sample a
  statement or a request), then 5.5-6.5 s of silence.
  turn_taking.json = [end of the question, end of the file].
- user_interruption: lead, a question, 3.0-4.0 s of silence in which the agent
  answers, an interrupting phrase, then 5.0-6.0 s of silence. The interruption
  starts 1.5 s after the agent's expected start (end of question + 1.5-2.5 s),
  or, with ``agent_start``, 1.5 s after the time that callable reports.
  interrupt.json = [{context: question, interrupt: phrase, timestamp: [start, end] of the phrase}].
- backchannel: lead, a 20-40 s monologue of sentences separated by 0.4-1.2 s
  pauses, then 1.0 s of silence. input.wav only (no human reference distribution).

``speaker="piper"`` (``voice bench make-data --speaker piper``) speaks every
sample with the embedded Piper voice instead (speed and variation drawn per
sample): a neural voice with human-like prosody, which espeak-ng's formant
voices lack and which Smart Turn (an acoustic model) needs to be judged on.
A pause_handling question is then synthesized whole and cut at the word
boundary (Whisper word times, moved to the quietest 10 ms near them), so the
first half keeps the contour of a sentence that goes on; if the words do not
line up, both halves are synthesized apart and ``synth.json`` says so.

Every sample folder also gets ``synth.json``: the voice settings and each
phrase's [start, end, text] (not part of FDB's layout; ignored by its scripts).
Deterministic for a given seed: each sample draws from its own generator
seeded with (seed, task, index).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.fdb.layout import BenchError, write_json

RATE = 16000
TRIM_REL_DB = -40.0  # phrase edges: 10 ms RMS envelope 40 dB under the phrase's peak
INTERRUPT_AFTER_AGENT_S = 1.5
PAUSE_TAIL_S = 0.2
PROBE_SILENCE_S = 8.0  # silence after the question given to ``agent_start``

VOICES = (
    "en-us+m3", "en+f2", "en-gb", "en-us+f4", "en-gb-x-rp+m1", "en-us+m7",
    "en-gb-scotland+f3", "en-029+m2", "en+f5", "en-us+m5", "en-gb+f1", "en-us+m2",
)

QUESTIONS = (
    "How long should I boil an egg if I want the yolk a little runny?",
    "What is a good way to keep basil alive on a kitchen windowsill?",
    "Can you recommend a simple stretch for a stiff lower back?",
    "Why does bread go stale faster in the fridge?",
    "What should I pack for a weekend hiking trip in the mountains?",
    "How often should I water a snake plant?",
    "What is the best way to get a coffee stain out of a white shirt?",
    "How do I start running if I have never done it before?",
    "What is a quick dinner I can make with rice and eggs?",
    "Is it better to study in the morning or at night?",
    "How can I fall asleep faster when my mind keeps racing?",
    "What are some fun things to do on a rainy Sunday?",
    "How much should I tip at a restaurant in the United States?",
    "Why do cats like to sit in cardboard boxes?",
    "What is the difference between baking soda and baking powder?",
    "How do I make my phone battery last longer?",
    "What is a good first board game for a family with young kids?",
    "How can I stop my glasses from fogging up when I wear a mask?",
    "What time of year is best for planting tomatoes?",
    "How do I politely decline an invitation to a party?",
    "What is an easy way to learn a few words of Spanish every day?",
    "Why is the sky orange at sunset?",
    "How should I store fresh strawberries so they last?",
    "What is a healthy snack I can take to work?",
    "How do I clean a cast iron pan without ruining it?",
    "What is a good gift for a friend who loves to cook?",
    "How many hours of sleep does a teenager need?",
    "What can I do to make my small apartment feel bigger?",
    "How do I get my dog to stop pulling on the leash?",
    "What is the easiest houseplant for someone who forgets to water?",
    "How can I save a little money on groceries each week?",
    "What should I do if my car battery dies in the morning?",
)

# Turns that end on a statement or a request, as many real turns do: the agent is
# expected to answer, though no question was asked.
STATEMENTS = (
    "My flight to Denver was cancelled this morning.",
    "I have a job interview tomorrow and I am really nervous.",
    "The heating in my apartment stopped working last night.",
    "I think my sourdough starter has gone bad.",
    "My daughter wants a puppy for her birthday.",
    "I just moved to a new city and I don't know anyone yet.",
    "My tomato plants have yellow spots on the leaves.",
    "I keep waking up at three in the morning.",
    "We are going camping this weekend for the first time.",
    "My laptop gets really hot when I watch videos.",
    "I forgot my best friend's birthday yesterday.",
    "I would like to book a table for two at seven tonight.",
    "I need a present for my sister's graduation.",
    "Please remind me to call the dentist on Monday.",
)

# (first half ending on an incomplete clause, second half)
PAUSE_QUESTIONS = (
    ("Could you tell me how long I should", "roast a chicken that weighs about two kilos?"),
    ("I was wondering if there is a good way to", "keep my bike from rusting in the winter?"),
    ("What do you think is the best time to", "visit the beach if I want to avoid crowds?"),
    ("Can you explain why my sourdough bread keeps", "coming out flat and dense?"),
    ("Do you know how many cups of coffee are", "too many for one day?"),
    ("I need some advice about how to", "ask my neighbor to turn the music down."),
    ("Is there a simple way to", "remember people's names when I first meet them?"),
    ("What would you suggest for a", "birthday dinner for my grandmother?"),
    ("How can I teach my daughter to", "ride a bike without training wheels?"),
    ("Could you remind me what the difference is between", "a latte and a flat white?"),
    ("I'm trying to figure out whether I should", "take the train or drive to the city."),
    ("What is the best way to", "wash a wool sweater without shrinking it?"),
    ("Can you give me a few ideas for", "a picnic lunch that kids will eat?"),
    ("Why is it that my houseplants always", "get yellow leaves in the winter?"),
    ("How long does it usually take to", "get used to waking up an hour earlier?"),
    ("What should I look for when I", "buy a used car from a private seller?"),
    ("Is it a good idea to", "exercise right after eating a big meal?"),
    ("Could you help me think of a name for", "my new orange kitten?"),
    ("I would like to know how I can", "make my tomato sauce less sour."),
    ("What are some ways to", "keep the kids busy on a long car ride?"),
    ("Do you think it is better to", "rent or buy a bike for a week of holidays?"),
    ("How do people usually", "split the bill when they eat out with friends?"),
    ("Can you tell me what I need to", "bring to renew my passport?"),
    ("I've always wondered why", "onions make you cry when you cut them."),
    ("What would be a good way to", "start a conversation with a new coworker?"),
    ("How much water should I", "drink on a hot day when I'm working outside?"),
    ("Could you suggest something to", "read on a long flight next week?"),
    ("What is the trick to", "cooking pasta so it doesn't stick together?"),
    ("Is there anything I can do to", "make my morning commute less stressful?"),
    ("How should I go about", "planning a small surprise party for my brother?"),
)

INTERRUPTIONS = (
    "Sorry, wait, can you say that more slowly?",
    "Hold on, can you make that a bit shorter?",
    "Actually, never mind, what about doing it on the weekend instead?",
    "Wait, is that safe for kids too?",
    "Sorry to cut in, but how much would that cost?",
    "Hang on, can you give me just the first step?",
    "Actually, I meant for tomorrow morning, not today.",
    "Wait, why is that?",
    "Sorry, can you repeat the last part?",
    "Hold on, is there a cheaper way to do it?",
    "Actually, can you explain it like I'm five?",
    "Wait, how long would that take?",
    "Sorry, I don't have that at home. What else could I use?",
    "Hang on, what if it's raining?",
    "Actually, can you just give me one tip?",
    "Wait, does that work for beginners too?",
    "Sorry, what did you mean by that?",
    "Hold on, is there a faster way?",
    "Actually, can you tell me what to avoid instead?",
    "Wait, wait, I only have ten minutes.",
    "Sorry, can you say that in one sentence?",
    "Hang on, what's the most important thing to remember?",
)

MONOLOGUE = (
    "So last weekend I finally cleaned out the garage.",
    "It took me the whole Saturday, which I did not expect at all.",
    "I found a box of old photos from when I was in school.",
    "There was one of me and my brother at the lake with our dad.",
    "We used to go there every summer when we were kids.",
    "My mother always packed the same sandwiches, cheese and tomato.",
    "Anyway, after that I started sorting the tools on the shelves.",
    "Half of them I had never used, to be honest.",
    "My neighbor came over and asked if I wanted to sell the old lawn mower.",
    "I told him he could just have it if he took it away.",
    "Then it started to rain, so I had to move everything inside.",
    "The whole living room was full of boxes for a while.",
    "My partner was not very happy about that, as you can imagine.",
    "In the evening we ordered pizza and looked through the photos together.",
    "We laughed a lot about my haircut in those pictures.",
    "On Sunday I drove to the recycling center with the car full.",
    "The line was really long because everyone had the same idea.",
    "I waited almost forty minutes just to get in.",
    "While I was waiting I called my sister to catch up.",
    "She just started a new job at a bakery downtown.",
    "She gets up at four in the morning now, which sounds terrible to me.",
    "But she says she loves the smell of fresh bread every day.",
    "After the recycling center I stopped at the hardware store.",
    "I bought some hooks to hang the bikes on the wall.",
    "Now the garage actually has room for the car again.",
    "I think I will try to keep it tidy this time.",
    "Next month I want to start on the attic, which is even worse.",
    "There are things up there from the people who lived here before us.",
    "I once found an old radio that still worked.",
    "We keep it in the kitchen now and listen to it in the mornings.",
    "Honestly, it is one of my favorite things in the house.",
    "Anyway, that was pretty much my whole weekend.",
)

_TASK_INDEX = {"pause_handling": 0, "smooth_turn_taking": 1, "user_interruption": 2, "backchannel": 3}
MAKE_TASKS = tuple(_TASK_INDEX)

AgentStart = Callable[[np.ndarray], "float | None"]


# --------------------------------------------------------------- synthesis

def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise BenchError("espeak-ng is not installed (apt-get install espeak-ng)")
    return exe


def synthesize(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One phrase from espeak-ng as 16 kHz float32, untrimmed."""
    import soundfile as sf

    from voice.audio import resample

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phrase.wav"
        proc = subprocess.run([_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), "--stdin"],
                              input=text.encode("utf-8"), capture_output=True, timeout=60)
        if proc.returncode != 0 or not path.exists():
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise BenchError(f"espeak-ng failed for voice {voice}: {err[0] if err else proc.returncode}")
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(audio.mean(axis=1), sr, RATE).astype(np.float32)


def trim(audio: np.ndarray, rel_db: float = TRIM_REL_DB) -> np.ndarray:
    """The span where the 10 ms RMS envelope is within ``rel_db`` of its peak (first to last such sample)."""
    x = np.asarray(audio, dtype=np.float64)
    k = RATE // 100
    env = np.sqrt(np.convolve(x * x, np.ones(k) / k, mode="same"))
    if len(env) == 0 or env.max() <= 1e-6:
        raise BenchError("espeak-ng produced silence")
    loud = np.flatnonzero(env > env.max() * 10 ** (rel_db / 20))
    return np.asarray(audio[loud[0]:loud[-1] + 1], dtype=np.float32)


class Voice:
    """One synthetic speaker: espeak voice, speed, pitch and peak level drawn from ``rng``."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.name = str(VOICES[int(rng.integers(len(VOICES)))])
        self.speed = int(rng.integers(140, 191))
        self.pitch = int(rng.integers(30, 71))
        self.peak = float(rng.uniform(0.35, 0.8))

    def say(self, text: str) -> np.ndarray:
        audio = trim(synthesize(text, self.name, self.speed, self.pitch))
        return (audio * (self.peak / max(float(np.abs(audio).max()), 1e-6))).astype(np.float32)

    def say_split(self, first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
        """The two halves of a paused sentence (espeak-ng: each synthesized on its own)."""
        return self.say(first), self.say(second)

    def describe(self) -> dict[str, Any]:
        return {"voice": self.name, "speed_wpm": self.speed, "pitch": self.pitch, "peak": round(self.peak, 3)}


class PiperSpeaker:
    """The embedded Piper voice with speed, variation and level drawn from ``rng``."""

    _voice = None
    _asr = None

    def __init__(self, rng: np.random.Generator) -> None:
        self.name = "piper:en_US-joe-medium"
        self.length_scale = float(rng.uniform(0.85, 1.2))
        self.noise_scale = float(rng.uniform(0.5, 0.8))
        self.peak = float(rng.uniform(0.35, 0.8))
        self.split = None  # how the last say_split cut its phrase

    @classmethod
    def _piper(cls):
        if cls._voice is None:
            from models.tts import PiperSynth

            cls._voice = PiperSynth().voice
        return cls._voice

    def _synth(self, text: str) -> np.ndarray:
        from piper import SynthesisConfig

        from voice.audio import resample

        voice = self._piper()
        config = SynthesisConfig(length_scale=self.length_scale, noise_scale=self.noise_scale)
        audio = np.concatenate([np.asarray(c.audio_float_array, dtype=np.float32)
                                for c in voice.synthesize(text, syn_config=config)])
        audio = np.nan_to_num(audio)
        return resample(audio, voice.config.sample_rate, RATE).astype(np.float32)

    def _level(self, audio: np.ndarray, peak_of: np.ndarray | None = None) -> np.ndarray:
        ref = peak_of if peak_of is not None else audio
        return (audio * (self.peak / max(float(np.abs(ref).max()), 1e-6))).astype(np.float32)

    def say(self, text: str) -> np.ndarray:
        return self._level(trim(self._synth(text)))

    def say_split(self, first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
        """``first + " " + second`` spoken as one sentence, cut where ``first`` ends."""
        import re

        whole = trim(self._synth(f"{first} {second}"))
        n_first = len(re.findall(r"[A-Za-z0-9']+", first))
        if PiperSpeaker._asr is None:
            from models.asr import load_transcriber
            from voice.settings import ASRSettings

            PiperSpeaker._asr = load_transcriber(ASRSettings())
        words = PiperSpeaker._asr.transcribe_words(whole)
        n_words = len(re.findall(r"[A-Za-z0-9']+", f"{first} {second}"))
        if len(words) == n_words and 0 < n_first < n_words:
            k = RATE // 100
            # Whisper's word edges are approximate: cut at the quietest 10 ms in the last
            # 120 ms before its end of ``first``, never after it (the next word's onset, a
            # plosive above all, would read as one more word), with 10 ms fades (no click).
            end = words[n_first - 1].end
            lo = max(0, int((end - 0.12) * RATE))
            hi = min(len(whole), int(end * RATE))
            frames = [float(np.sqrt(np.mean(whole[i:i + k] ** 2))) for i in range(lo, max(lo + 1, hi - k), k)]
            cut = lo + k * int(np.argmin(frames)) + k // 2
            head, tail = whole[:cut].copy(), whole[cut:].copy()
            head[-k:] *= np.linspace(1.0, 0.0, min(k, len(head)), dtype=np.float32)
            tail[:k] *= np.linspace(0.0, 1.0, min(k, len(tail)), dtype=np.float32)
            self.split = "cut at a word boundary"
            return self._level(trim(head), whole), self._level(trim(tail), whole)
        self.split = "halves synthesized apart (word times did not line up)"
        return self.say(first), self.say(second)

    def describe(self) -> dict[str, Any]:
        out = {"voice": self.name, "length_scale": round(self.length_scale, 3),
               "noise_scale": round(self.noise_scale, 3), "peak": round(self.peak, 3)}
        if self.split:
            out["split"] = self.split
        return out


class Timeline:
    """Speech and silence laid end to end; phrase edges are exact sample positions."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.speech: list[list[Any]] = []

    @property
    def now(self) -> float:
        return self.n / RATE

    def silence(self, seconds: float) -> None:
        k = int(round(seconds * RATE))
        self.parts.append(np.zeros(k, dtype=np.float32))
        self.n += k

    def speak(self, audio: np.ndarray, text: str) -> tuple[float, float]:
        start = self.n
        self.parts.append(audio)
        self.n += len(audio)
        self.speech.append([start / RATE, self.n / RATE, text])
        return start / RATE, self.n / RATE

    def audio(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.float32)


def _add_noise(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """Low background noise on about half the samples (-65..-50 dBFS RMS), else none."""
    if rng.uniform() < 0.5:
        return audio, None
    level = float(rng.uniform(-65.0, -50.0))
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    noise = np.convolve(noise, np.ones(4, dtype=np.float32) / 4, mode="same")  # a little less hiss
    noise *= 10 ** (level / 20) / max(float(np.sqrt(np.mean(noise ** 2))), 1e-9)
    return (audio + noise).astype(np.float32), round(level, 1)


def _pick(bank: tuple, seed: int, task: str, index: int) -> Any:
    """The index-th item of a per-(seed, task) shuffle of ``bank`` (no repeats within len(bank))."""
    order = np.random.default_rng([seed, _TASK_INDEX[task], 7919]).permutation(len(bank))
    return bank[int(order[index % len(bank)])]


# --------------------------------------------------------------- the four tasks

def pause_sample(rng: np.random.Generator, voice: Voice, item: tuple[str, str]) -> tuple[Timeline, dict]:
    first, second = item
    first_audio, second_audio = voice.say_split(first, second)
    tl = Timeline()
    tl.silence(rng.uniform(0.3, 0.8))
    _, s = tl.speak(first_audio, first)
    tl.silence(rng.uniform(1.0, 2.0))
    e, _ = tl.speak(second_audio, second)
    tl.silence(PAUSE_TAIL_S)
    return tl, {"pause.json": [{"text": "[PAUSE]", "timestamp": [round(s, 4), round(e, 4)]}]}


def turn_taking_sample(rng: np.random.Generator, voice: Voice, question: str) -> tuple[Timeline, dict]:
    tl = Timeline()
    tl.silence(rng.uniform(0.3, 0.8))
    _, s = tl.speak(voice.say(question), question)
    tl.silence(rng.uniform(5.5, 6.5))
    return tl, {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [round(s, 4), round(tl.now, 4)]}]}


def interruption_sample(rng: np.random.Generator, voice: Voice, question: str, interrupt: str,
                        agent_start: AgentStart | None = None) -> tuple[Timeline, dict]:
    tl = Timeline()
    tl.silence(rng.uniform(0.3, 0.8))
    _, q_end = tl.speak(voice.say(question), question)
    gap = rng.uniform(3.0, 4.0)  # drawn even when agent_start is given, so the rest stays the same
    start = q_end + gap
    expected = start - INTERRUPT_AFTER_AGENT_S
    timed = "expected"
    if agent_start is not None:
        probe = np.concatenate([tl.audio(), np.zeros(int(PROBE_SILENCE_S * RATE), dtype=np.float32)])
        t = agent_start(probe)
        if t is not None and q_end - 1.0 < t < q_end + PROBE_SILENCE_S:
            expected, timed = float(t), "measured"
            start = max(q_end + 0.3, expected + INTERRUPT_AFTER_AGENT_S)
    tl.silence(start - tl.now)
    s, e = tl.speak(voice.say(interrupt), interrupt)
    tl.silence(rng.uniform(5.0, 6.0))
    meta = [{"context": question, "interrupt": interrupt, "timestamp": [round(s, 4), round(e, 4)]}]
    return tl, {"interrupt.json": meta, "_agent_start": {"t": round(expected, 4), "source": timed}}


def backchannel_sample(rng: np.random.Generator, voice: Voice, first: int) -> tuple[Timeline, dict]:
    target = rng.uniform(20.0, 40.0)
    tl = Timeline()
    tl.silence(rng.uniform(0.3, 0.8))
    k = first
    while True:
        text = MONOLOGUE[k % len(MONOLOGUE)]
        k += 1
        audio = voice.say(text)
        if tl.speech and tl.now + len(audio) / RATE > 40.0:
            break
        tl.speak(audio, text)
        if tl.now >= target:
            break
        tl.silence(rng.uniform(0.4, 1.2))
    tl.silence(1.0)
    return tl, {}


SPEAKERS = ("espeak", "piper")


def make_sample(task: str, index: int, seed: int, agent_start: AgentStart | None = None,
                speaker: str = "espeak") -> tuple[np.ndarray, dict]:
    """(input audio, {file name: JSON}) of one synthetic sample."""
    if speaker not in SPEAKERS:
        raise BenchError(f"unknown speaker {speaker!r}; choose from {', '.join(SPEAKERS)}")
    rng = np.random.default_rng([seed, _TASK_INDEX[task], index])
    voice = Voice(rng) if speaker == "espeak" else PiperSpeaker(rng)
    if task == "pause_handling":
        tl, files = pause_sample(rng, voice, _pick(PAUSE_QUESTIONS, seed, task, index))
    elif task == "smooth_turn_taking":
        # Every third turn ends on a statement or a request rather than a question.
        bank = STATEMENTS if index % 3 == 2 else QUESTIONS
        tl, files = turn_taking_sample(rng, voice, _pick(bank, seed, task, index))
    elif task == "user_interruption":
        tl, files = interruption_sample(rng, voice, _pick(QUESTIONS, seed, task, index),
                                        _pick(INTERRUPTIONS, seed, task, index), agent_start)
    elif task == "backchannel":
        first = int(np.random.default_rng([seed, 3, 104729]).integers(len(MONOLOGUE))) + index * 7
        tl, files = backchannel_sample(rng, voice, first)
    else:
        raise BenchError(f"unknown task {task!r}; choose from {', '.join(MAKE_TASKS)}")
    audio, noise = _add_noise(tl.audio(), rng)
    synth = {"task": task, "seed": seed, "index": index, **voice.describe(), "noise_dbfs": noise,
             "duration_s": round(len(audio) / RATE, 4),
             "speech": [[round(s, 4), round(e, 4), t] for s, e, t in tl.speech]}
    if "_agent_start" in files:
        synth["agent_start"] = files.pop("_agent_start")
    files["synth.json"] = synth
    return audio, files


def make_data(out_dir: str | Path, n: int = 10, seed: int = 0, tasks: tuple[str, ...] | list[str] = MAKE_TASKS,
              agent_start: AgentStart | None = None, progress: Callable[[str, int], None] | None = None,
              speaker: str = "espeak") -> Path:
    """Write ``n`` samples per task under ``out_dir/<task>/<1..n>/``; return ``out_dir``.

    ``agent_start(audio) -> seconds | None``: optional; given the 16 kHz
    question followed by 8 s of silence, reports when the agent started
    talking, and the interruption is placed 1.5 s after it.
    """
    from voice.audio import write_wav

    if n < 1:
        raise BenchError("n must be at least 1")
    out = Path(out_dir)
    for task in tasks:
        for i in range(n):
            audio, files = make_sample(task, i, seed, agent_start, speaker)
            d = out / task / str(i + 1)
            d.mkdir(parents=True, exist_ok=True)
            write_wav(d / "input.wav", audio, RATE)
            for name, data in files.items():
                write_json(d / name, data)
            if progress is not None:
                progress(task, i + 1)
    return out
