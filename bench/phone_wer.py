"""Word error rate of the recogniser on phone audio against 16 kHz (issue 20).

``python -m bench.phone_wer --out out/phone-wer``

Two sets: the real human dev set (``../shared/speech/fdb-human-dev``, FDB v1
layout; the reference is ``source.json``'s ``text``, the two utterances of an
interruption case joined; the three LibriSpeech monologues whose ``text`` is a
placeholder have no reference and are left out) and the espeak questions of
``bench/latency.py`` (the same voices and speeds as ``make bench-latency``).

Every clip goes through one *channel* and then the service's own recogniser
(``models.asr.load_transcriber`` on the configured ASR settings, one
``transcribe`` call per clip, as the pipeline does per utterance):

- ``16k``: the clip as recorded (browser / WebRTC path).
- ``g711u``: what a PCMU call hands the pipeline. The caller's phone takes the
  voice to 8 kHz (soxr, the same resampler as everywhere here), mu-law encodes
  and decodes it (``audioop``, bit-exact G.711), and the agent's media port
  upsamples the 8 kHz stream 20 ms frame by 20 ms frame with the SIP path's own
  :class:`EdgeUpsampler` (``voice/transports/sip/audio_port.py``).
- ``g711a``: the same with A-law (PCMA).
- ``g711u-vhq``: mu-law, upsampled whole with soxr's very-high-quality filter
  instead of the frame upsampler (is the resampler the loss?).
- ``g722``: G.722 64 kbit/s at 16 kHz end to end (bit-exact ITU codec, the
  ``G722`` package), what a G.722 call would give with a 16 kHz media path.
- ``g722-8k``: G.722 decoded and then taken through an 8 kHz conference bridge
  (down to 8 kHz and back up with the frame upsampler).

``--models`` adds recognisers: ``base=/path/to/faster-whisper-base`` (a
faster-whisper model directory) runs every channel again with that model;
``tiny-b5=default:beam=5`` the configured model with other ASR settings.

WER is corpus WER (edits / reference words) after whisper's
``EnglishTextNormalizer`` (openai-whisper is a dependency), with a small
fallback normaliser when it is missing. Writes ``summary.json`` (figures and
every hypothesis) and ``report.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import audioop
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voice.audio import read_wav, resample

RATE = 16000
PHONE = 8000
HUMAN_DEV = Path(__file__).resolve().parents[2] / "shared" / "speech" / "fdb-human-dev"


# ---------------------------------------------------------------- normalising, WER

def normaliser():
    try:
        from whisper.normalizers import EnglishTextNormalizer

        return EnglishTextNormalizer()
    except ImportError:  # small stand-in: case, punctuation, a few contractions
        subs = {"what's": "what is", "it's": "it is", "i'm": "i am", "don't": "do not",
                "you'll": "you will", "there's": "there is", "who's": "who is"}

        def norm(text: str) -> str:
            t = text.lower().replace("-", " ")
            for a, b in subs.items():
                t = t.replace(a, b)
            return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]", " ", t)).replace("'", "").strip()

        return norm


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(pairs: list[tuple[str, str]]) -> tuple[float, int, int]:
    """Corpus WER over (normalised reference, normalised hypothesis) pairs: (wer, edits, words)."""
    edits = words = 0
    for ref, hyp in pairs:
        r, h = ref.split(), hyp.split()
        edits += edit_distance(r, h)
        words += len(r)
    return (edits / words if words else float("nan")), edits, words


# ---------------------------------------------------------------- clips

@dataclass
class Clip:
    set: str
    name: str
    audio: np.ndarray  # float32, 16 kHz
    reference: str


def human_clips(root: Path) -> list[Clip]:
    out = []
    for src in sorted(root.glob("*/*/source.json"), key=lambda p: (p.parent.parent.name, int(p.parent.name))):
        meta = json.loads(src.read_text())
        text = meta.get("text", "")
        if not text or text.startswith("("):  # "(read passage, ...)": no reference transcript
            continue
        text = " ".join(t.strip() for t in text.split("||"))
        out.append(Clip("human", f"{src.parent.parent.name}/{src.parent.name}",
                        read_wav(src.parent / "input.wav"), text))
    return out


def espeak_clips(n: int) -> list[Clip]:
    from bench.latency import QUESTIONS, VOICES, espeak_trimmed

    rng = np.random.default_rng(0)  # the speeds bench/latency.py draws
    pad = np.zeros(int(0.3 * RATE), np.float32)
    out = []
    for i in range(n):
        q, voice, speed = QUESTIONS[i % len(QUESTIONS)], VOICES[i % len(VOICES)], int(rng.integers(145, 185))
        out.append(Clip("espeak", f"q{i:02d} {voice} {speed}", np.concatenate([pad, espeak_trimmed(q, voice, speed), pad]), q))
    return out


# ---------------------------------------------------------------- channels

def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()


def _float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def frame_upsample(pcm8k: bytes) -> np.ndarray:
    """8 kHz PCM through the SIP media port's EdgeUpsampler, fed in 20 ms frames like the bridge does."""
    from voice.transports.sip.audio_port import FRAME_BYTES, EdgeUpsampler

    up = EdgeUpsampler()
    pcm8k += bytes(FRAME_BYTES * 2)  # flush the look-ahead (the call goes on after the speech)
    out = [up.process(pcm8k[i:i + FRAME_BYTES]) for i in range(0, len(pcm8k), FRAME_BYTES)]
    return _float(b"".join(out))


def to_phone(x: np.ndarray) -> bytes:
    """The caller's side: 16 kHz voice -> 8 kHz PCM16."""
    return _pcm16(resample(x.astype(np.float32), RATE, PHONE))


def g711(pcm8k: bytes, law: str) -> bytes:
    if law == "u":
        return audioop.ulaw2lin(audioop.lin2ulaw(pcm8k, 2), 2)
    return audioop.alaw2lin(audioop.lin2alaw(pcm8k, 2), 2)


def g722_16k(x: np.ndarray) -> np.ndarray:
    import G722

    enc, dec = G722.G722(RATE, 64000), G722.G722(RATE, 64000)
    pcm = np.frombuffer(_pcm16(x), dtype=np.int16)
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % 2, np.int16)])
    y = np.asarray(dec.decode(enc.encode(pcm.tolist())), dtype=np.int16)
    return y.astype(np.float32) / 32768.0


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if len(y) >= n else np.concatenate([y, np.zeros(n - len(y), np.float32)])


CHANNELS = {
    "16k": lambda x: x,
    "g711u": lambda x: _fit(frame_upsample(g711(to_phone(x), "u")), len(x)),
    "g711a": lambda x: _fit(frame_upsample(g711(to_phone(x), "a")), len(x)),
    "g711u-vhq": lambda x: _fit(np.asarray(__import__("soxr").resample(
        _float(g711(to_phone(x), "u")), PHONE, RATE, quality="VHQ"), np.float32), len(x)),
    "g722": lambda x: _fit(g722_16k(x), len(x)),
    "g722-8k": lambda x: _fit(frame_upsample(to_phone(g722_16k(x))), len(x)),
}


def channel_available(name: str) -> str | None:
    if name.startswith("g722"):
        try:
            import G722  # noqa: F401
        except ImportError:
            return "needs the G722 package (pip install G722)"
    return None


# ---------------------------------------------------------------- run

def load_model(spec: str):
    from models.asr import load_transcriber
    from voice.settings import load_settings

    asr = load_settings().asr
    spec, _, opts = spec.partition(":")
    if spec != "default":
        asr = asr.model_copy(update={"model": spec})
    for opt in filter(None, opts.split(":")):  # e.g. beam=5
        k, _, v = opt.partition("=")
        asr = asr.model_copy(update={{"beam": "beam_size"}.get(k, k): type(getattr(asr, {"beam": "beam_size"}.get(k, k)))(v)})
    return load_transcriber(asr)


def run(clips: list[Clip], channels: list[str], models: dict[str, str], out: Path, save_audio: bool) -> dict:
    norm = normaliser()
    results: dict = {}
    rows: list[dict] = []
    for mname, spec in models.items():
        t0 = time.perf_counter()
        model = load_model(spec)
        print(f"model {mname} ({spec}) loaded in {time.perf_counter() - t0:.1f}s", flush=True)
        for ch in channels:
            t0 = time.perf_counter()
            decode_s = []
            per_set: dict[str, list[tuple[str, str]]] = {}
            for clip in clips:
                audio = CHANNELS[ch](clip.audio).astype(np.float32)
                if save_audio:
                    from voice.audio import write_wav

                    write_wav(out / "audio" / ch / f"{clip.set}-{clip.name.split()[0].replace('/', '-')}.wav", audio, RATE)
                t1 = time.perf_counter()
                hyp = model.transcribe(audio)
                decode_s.append(time.perf_counter() - t1)
                ref_n, hyp_n = norm(clip.reference), norm(hyp)
                per_set.setdefault(clip.set, []).append((ref_n, hyp_n))
                e = edit_distance(ref_n.split(), hyp_n.split())
                rows.append({"model": mname, "channel": ch, "set": clip.set, "clip": clip.name,
                             "reference": clip.reference, "hypothesis": hyp, "edits": e,
                             "words": len(ref_n.split())})
            entry = {}
            for s, pairs in per_set.items():
                w, e, n = wer(pairs)
                entry[s] = {"wer": round(w, 4), "edits": e, "words": n, "clips": len(pairs)}
            results.setdefault(mname, {})[ch] = {
                **entry, "decode_median_s": round(statistics.median(decode_s), 3),
                "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"  {mname:8s} {ch:10s} " + "  ".join(
                f"{s} WER {v['wer'] * 100:5.1f}% ({v['edits']}/{v['words']})" for s, v in entry.items())
                + f"  decode median {results[mname][ch]['decode_median_s']}s", flush=True)
    return {"results": results, "rows": rows}


def report(summary: dict) -> str:
    res = summary["results"]
    sets = summary["sets"]
    lines = ["# Phone WER (bench/phone_wer.py)", "",
             f"`{summary['command']}`; {summary['clips']}; normaliser: {summary['normaliser']}.", "",
             "| model | channel | " + " | ".join(f"{s} WER" for s in sets) + " | "
             + " | ".join(f"{s} vs 16k" for s in sets) + " | decode median |",
             "|---|---|" + "---|" * (2 * len(sets) + 1)]
    for m, chans in res.items():
        base = chans.get("16k") or res.get("tiny", {}).get("16k") or {}
        for ch, v in chans.items():
            ratios = []
            for s in sets:
                b = base.get(s, {}).get("wer")
                ratios.append(f"{v[s]['wer'] / b:.2f}x" if b else "-")
            lines.append(f"| {m} | {ch} | " + " | ".join(f"{v[s]['wer'] * 100:.1f}% ({v[s]['edits']}/{v[s]['words']})"
                                                       for s in sets)
                         + " | " + " | ".join(ratios) + f" | {v['decode_median_s']} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/phone-wer")
    ap.add_argument("--human", default=str(HUMAN_DEV), help="FDB-layout human dev set")
    ap.add_argument("--espeak", type=int, default=14, help="how many espeak questions (0 = none)")
    ap.add_argument("--channels", default=",".join(CHANNELS), help=f"comma list of {', '.join(CHANNELS)}")
    ap.add_argument("--models", default="tiny=default",
                    help="comma list of name=spec[:setting=value...]; spec 'default' = the configured ASR "
                         "(embedded tiny.en), else a faster-whisper model directory; settings are asr.* "
                         "(beam=5 for beam_size)")
    ap.add_argument("--save-audio", action="store_true", help="write every channel's audio under OUT/audio")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    channels = []
    for ch in [c.strip() for c in args.channels.split(",") if c.strip()]:
        if ch not in CHANNELS:
            ap.error(f"unknown channel {ch!r}")
        why = channel_available(ch)
        if why:
            print(f"skipping channel {ch}: {why}")
        else:
            channels.append(ch)
    models = dict(m.split("=", 1) for m in args.models.split(","))
    clips = []
    human = Path(args.human)
    if human.is_dir():
        clips += human_clips(human)
    else:
        print(f"no human dev set at {human}: espeak only")
    if args.espeak:
        clips += espeak_clips(args.espeak)
    sets = sorted({c.set for c in clips}, key=lambda s: s != "human")
    counts = ", ".join(f"{s} {sum(c.set == s for c in clips)} clips / {sum(len(c.audio) for c in clips if c.set == s) / RATE:.0f} s"
                       for s in sets)
    print(f"{counts}; channels {', '.join(channels)}; models {', '.join(models)}")
    summary = run(clips, channels, models, out, args.save_audio)
    norm = normaliser()
    summary.update({"command": "python -m bench.phone_wer " + " ".join(sys.argv[1:]), "clips": counts, "sets": sets,
                    "normaliser": "whisper EnglishTextNormalizer" if type(norm).__name__ == "EnglishTextNormalizer"
                    else "fallback"})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    md = report(summary)
    (out / "report.md").write_text(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
