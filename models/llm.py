"""Local LLM through llama.cpp (llama-cpp-python), prompted for spoken replies.

The embedded Gemma 3 270M is a *base* model: it continues text, it does not
follow chat templates. A fixed few-shot dialogue teaches it the register
(short, friendly, spoken); the prefix stays identical between calls so
llama.cpp reuses its KV cache and the first token comes in tens of ms.
Instruction-tuned GGUF files are prompted the same way, which they handle fine.
"""

from __future__ import annotations

import atexit
import re
import threading
from collections.abc import Iterator

from models.cpu import SpeechFirst
from models.weights import EMBEDDED, WeightsNotFound, embedded_gemma_gguf, local_file

USER, AGENT = "User", "Joe"

FEW_SHOT = [
    ("Hi there, who am I talking to?", "Hi, I'm Joe, your voice assistant. What can I do for you?"),
    ("What's the capital of France?", "The capital of France is Paris."),
    ("Can you tell me a fun fact about octopuses?", "Sure! An octopus has three hearts and blue blood."),
    ("I'm feeling a bit tired today.", "Sorry to hear that. A short walk or a glass of water might help."),
    ("How do I boil an egg?", "Put the egg in boiling water for about eight minutes, then cool it in cold water."),
]

STOP = [f"\n{USER}", f"{USER}:", f"\n{AGENT}:", "\n\n"]

_SENTENCE_END = re.compile(r"[.!?](\s|$)")


def build_prompt(system_prompt: str, history: list[dict]) -> str:
    """history: chat messages (role user/assistant) of this session, oldest first."""
    lines = [system_prompt.strip(), ""]
    for q, a in FEW_SHOT:
        lines += [f"{USER}: {q}", f"{AGENT}: {a}"]
    for m in history:
        role = m.get("role")
        text = " ".join(str(m.get("content", "")).split())
        if not text or role not in ("user", "assistant"):
            continue
        # A user who says "Joe:" must not be able to write the agent's lines.
        text = text.replace(f"{AGENT}:", f"{AGENT} -").replace(f"{USER}:", f"{USER} -")
        lines.append(f"{USER if role == 'user' else AGENT}: {text}")
    lines.append(f"{AGENT}:")
    return "\n".join(lines)


class LocalLLM:
    """A GGUF model in-process. One generation at a time per loaded model."""

    def __init__(self, model_path: str = EMBEDDED, *, threads: int = 2, context_tokens: int = 2048,
                 speech_first: SpeechFirst | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise WeightsNotFound("backend llama-cpp needs: pip install llama-cpp-python") from None
        path = embedded_gemma_gguf() if model_path == EMBEDDED else local_file(model_path, "GGUF model", (".gguf",))
        self.llm = Llama(model_path=str(path), n_ctx=context_tokens, n_threads=threads,
                         n_batch=256, verbose=False)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        # Shared with the TTS of this process: generation pauses while speech is synthesised.
        self.speech_first = speech_first or SpeechFirst()
        # Free the model before interpreter teardown: llama-cpp-python's own
        # finaliser runs too late and prints a TypeError on exit.
        atexit.register(self.llm.close)

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the fixed prompt prefix once so the first real turn hits the cache."""
        for _ in self.stream(build_prompt(system_prompt, []), max_tokens=1, temperature=0.0):
            pass

    def cancel(self) -> None:
        self._cancel.set()

    def stream(self, prompt: str, *, max_tokens: int, temperature: float,
               max_sentences: int = 2) -> Iterator[str]:
        """Yield text pieces; stop at end of turn or after ``max_sentences`` sentences."""
        with self._lock:
            self._cancel.clear()
            text = ""
            sentences = 0
            chunks = self.llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=temperature, top_p=0.9,
                repeat_penalty=1.1, stop=STOP, stream=True,
            )
            while True:
                if text:  # the first token is never held back: the synthesis waits for it
                    self.speech_first.wait_turn()
                chunk = next(chunks, None)
                if chunk is None or self._cancel.is_set():
                    return
                piece = chunk["choices"][0]["text"]
                if not piece:
                    continue
                if not text:
                    piece = piece.lstrip()
                text += piece
                yield piece
                sentences = len(_SENTENCE_END.findall(text))
                if sentences >= max_sentences:
                    return


def load_local_llm(llm_settings, speech_first: SpeechFirst | None = None) -> LocalLLM:
    return LocalLLM(llm_settings.model_path, threads=llm_settings.threads,
                    context_tokens=llm_settings.context_tokens, speech_first=speech_first)
