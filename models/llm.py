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
from collections.abc import Callable, Iterator

import numpy as np

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
    """A GGUF model in-process, as ``instances`` llama.cpp contexts: that many replies generate at once.

    The weights are memory-mapped, so every further context costs only its KV
    cache and scratch buffers; with one context, a second session's first
    token would wait for the whole reply of the first.
    """

    def __init__(self, model_path: str = EMBEDDED, *, threads: int = 2, context_tokens: int = 2048,
                 instances: int = 1, speech_first: SpeechFirst | None = None,
                 busy_elsewhere: Callable[[], bool] | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise WeightsNotFound("backend llama-cpp needs: pip install llama-cpp-python") from None
        path = embedded_gemma_gguf() if model_path == EMBEDDED else local_file(model_path, "GGUF model", (".gguf",))
        first = Llama(model_path=str(path), n_ctx=context_tokens, n_threads=threads, n_batch=256, verbose=False)
        # A lone reply generates on ``threads`` threads; while several generate at once
        # (several contexts taken) each drops to one, since llama.cpp's threads spin and
        # would crowd each other out.
        self.threads = threads
        self.contexts = [first] + [_sibling_context(first) for _ in range(max(1, instances) - 1)]
        self._free: list = list(self.contexts)
        self._free_changed = threading.Condition()
        for ctx in self.contexts:
            # Free the model before interpreter teardown: llama-cpp-python's own
            # finaliser runs too late and prints a TypeError on exit.
            atexit.register(ctx.close)
        # Shared with the TTS of this process: generation pauses while speech is synthesised.
        self.speech_first = speech_first or SpeechFirst()
        # Other work on the same cores (the pause-time ASR and Smart Turn, other live
        # conversations' audio): a reply then evaluates and generates on one thread too.
        # llama.cpp's threads meet after every operation, so one interrupted thread holds
        # the other: next to four streaming WebRTC sessions a token took 28-39 ms on two
        # threads against 22-28 ms on one (16-20 and 22 ms on an idle machine).
        self._busy_elsewhere = busy_elsewhere or (lambda: False)

    def warm_up(self, system_prompt: str) -> None:
        """Evaluate the fixed prompt prefix once per context so every first real turn hits the cache."""
        taken = [self._take(None) for _ in self.contexts]
        try:
            for ctx in taken:
                for _ in self._generate(ctx, build_prompt(system_prompt, []), max_tokens=1, temperature=0.0,
                                        max_sentences=1):
                    pass
        finally:
            for ctx in taken:
                self._give_back(ctx)

    def _take(self, prompt: str | None):
        """A free context, preferably the one whose evaluated tokens already start ``prompt``.

        A conversation's next prompt extends its last one: in the context that last
        generated for it, llama.cpp evaluates only the new turn. Another context holds
        another conversation, and the whole history (hundreds of tokens by the sixth
        turn) would be evaluated again before the first word.
        """
        tokens = None if prompt is None else np.asarray(self.contexts[0].tokenize(prompt.encode(), special=True))
        with self._free_changed:
            self._free_changed.wait_for(lambda: bool(self._free))
            ctx = min(self._free, key=lambda c: 0 if tokens is None else _reuse_cost(c, tokens))
            self._free.remove(ctx)
            return ctx

    def _give_back(self, ctx) -> None:
        with self._free_changed:
            self._free.append(ctx)
            self._free_changed.notify()

    def stream(self, prompt: str, *, max_tokens: int, temperature: float,
               max_sentences: int = 2) -> Iterator[str]:
        """Yield text pieces; stop at end of turn or after ``max_sentences`` sentences.

        Waits for a free context; closing the generator early frees it.
        """
        ctx = self._take(prompt)
        try:
            yield from self._generate(ctx, prompt, max_tokens=max_tokens, temperature=temperature,
                                      max_sentences=max_sentences)
        finally:
            self._give_back(ctx)

    def _generate(self, ctx, prompt: str, *, max_tokens: int, temperature: float,
                  max_sentences: int) -> Iterator[str]:
        text = ""
        threads = None
        chunks = ctx.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature, top_p=0.9,
            repeat_penalty=1.1, stop=STOP, stream=True,
        )
        try:
            while True:
                if text:  # the first token is never held back: the synthesis waits for it
                    self.speech_first.wait_turn()
                alone = len(self.contexts) - len(self._free) == 1 and not self._busy_elsewhere()
                wanted = self.threads if alone else 1
                if wanted != threads:  # between tokens (and before the prompt), on the generating thread: safe
                    ctx._ctx.set_n_threads(wanted, wanted)
                    threads = wanted
                chunk = next(chunks, None)
                if chunk is None:
                    return
                piece = chunk["choices"][0]["text"]
                if not piece:
                    continue
                if not text:
                    piece = piece.lstrip()
                text += piece
                yield piece
                if len(_SENTENCE_END.findall(text)) >= max_sentences:
                    return
        finally:
            chunks.close()  # ends llama.cpp's generation before the context is handed to another reply


def _reuse_cost(ctx, tokens) -> int:
    """Tokens to evaluate now in this context, plus those of whatever it holds that would be lost.

    The second term keeps one conversation from taking another's context for the sake
    of a few shared tokens ("User:") when a context holding only the fixed prompt start
    is free.
    """
    shared = _shared_start(ctx, tokens)
    return (len(tokens) - shared) + (ctx.n_tokens - shared)


def _shared_start(ctx, tokens) -> int:
    """How many of ``tokens`` the context has already evaluated, from the start."""
    done = ctx.input_ids[: min(ctx.n_tokens, len(tokens))]
    differ = np.flatnonzero(done != tokens[: len(done)])
    return int(differ[0]) if len(differ) else len(done)


def _sibling_context(llm):
    """Another llama.cpp context over ``llm``'s loaded model (weights not loaded or mapped twice).

    llama-cpp-python's ``Llama`` pairs one model with one context; llama.cpp
    itself allows several contexts per model. The copy shares the model, the
    tokenizer and the settings, and owns a fresh context, batch and token
    state (the attributes ``Llama.__init__`` creates for them; llama-cpp-python
    is pinned). Closing it frees only its own context.
    """
    import contextlib

    import numpy as np
    from llama_cpp import _internals

    other = object.__new__(type(llm))  # not copy.copy: Llama's __setstate__ loads the model again
    other.__dict__.update(llm.__dict__)
    other._stack = contextlib.ExitStack()
    other._ctx = other._stack.enter_context(contextlib.closing(
        _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)))
    other._batch = other._stack.enter_context(contextlib.closing(
        _internals.LlamaBatch(n_tokens=llm.n_batch, embd=0, n_seq_max=llm.context_params.n_ctx, verbose=False)))
    other._candidates = _internals.LlamaTokenDataArray(n_vocab=llm._n_vocab)
    other.n_tokens = 0
    other._requires_eval = True
    other.input_ids = np.ndarray(llm.input_ids.shape, dtype=np.intc)
    other.scores = np.ndarray(llm.scores.shape, dtype=np.single)
    other._sampler = None
    other.cache = None
    return other


def load_local_llm(llm_settings, speech_first: SpeechFirst | None = None,
                   busy_elsewhere: Callable[[], bool] | None = None) -> LocalLLM:
    return LocalLLM(llm_settings.model_path, threads=llm_settings.threads,
                    context_tokens=llm_settings.context_tokens, instances=llm_settings.instances,
                    speech_first=speech_first, busy_elsewhere=busy_elsewhere)
