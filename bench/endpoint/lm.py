"""A language model's end-of-utterance probability, as a fifth endpointing policy.

LiveKit's turn detector asks a small LM how likely the user's words are to end
here (the probability of its end-of-turn token after the unpunctuated text).
This is the same question put to the local GGUF model the agent already has:
in the agent's own few-shot dialogue prompt, after ``User: <words>``, the
probability that the next token ends the sentence or the line. The recogniser's
final punctuation is stripped first: it is the question being asked.

Not used live (docs/turn-taking.md, stop 19: with Gemma 3 270M it adds too little
over Smart Turn and the text cues to pay for a forward pass at every pause);
the benchmark keeps it so a larger GGUF model can be measured with one flag.
"""

from __future__ import annotations

import re
import time

import numpy as np

from models.llm import AGENT, USER, build_prompt

_FINAL_PUNCTUATION = re.compile(r"[\s.?!,;:…]+$")


def utterance_prompt(system_prompt: str, text: str) -> str:
    """The agent's dialogue prompt, ending in the user's words so far (no final punctuation)."""
    prompt = build_prompt(system_prompt, [])
    prompt = prompt[: prompt.rfind(f"{AGENT}:")]
    words = _FINAL_PUNCTUATION.sub("", " ".join(text.split()))
    return f"{prompt}{USER}: {words}"


class EndOfUtterance:
    """P(the user's utterance ends after these words) from a llama.cpp model, one pause at a time."""

    def __init__(self, model_path: str, system_prompt: str, *, threads: int = 1):
        from llama_cpp import Llama

        from models.weights import EMBEDDED, embedded_gemma_gguf, local_file

        path = embedded_gemma_gguf() if model_path == EMBEDDED else local_file(model_path, "GGUF model", (".gguf",))
        self._llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_batch=256, verbose=False)
        self._system_prompt = system_prompt
        self._vocab = self._llm.n_vocab()
        self._ends = np.array([i for i in range(self._vocab) if _ends_utterance(self._piece(i))], dtype=np.int64)

    def _piece(self, token: int) -> str:
        try:
            return self._llm.detokenize([token]).decode("utf-8", "ignore")
        except Exception:  # special tokens some builds refuse to detokenize
            return ""

    def probability(self, text: str) -> tuple[float, float]:
        """(P(end), seconds it took); the shared prompt prefix is evaluated once and kept."""
        started = time.perf_counter()
        llm = self._llm
        tokens = llm.tokenize(utterance_prompt(self._system_prompt, text).encode(), special=True)
        done = llm.input_ids[: llm.n_tokens]
        shared = 0
        limit = min(len(done), len(tokens) - 1)  # at least one token is evaluated: its logits are the answer
        while shared < limit and done[shared] == tokens[shared]:
            shared += 1
        llm._ctx.kv_cache_seq_rm(-1, shared, -1)
        llm.n_tokens = shared
        llm.eval(tokens[shared:])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(self._vocab,)).astype(np.float64)
        logits -= logits.max()
        p = np.exp(logits)
        return float(p[self._ends].sum() / p.sum()), time.perf_counter() - started

    def close(self) -> None:
        self._llm.close()


def _ends_utterance(piece: str) -> bool:
    """A token that ends the sentence (".", "?", "!", with or without a space before) or the line."""
    return piece.startswith("\n") or piece.lstrip(" ")[:1] in (".", "?", "!")
