"""The embedded GGUF model as several llama.cpp contexts over one loaded model (real Gemma 3 270M)."""

from __future__ import annotations

import threading

import llama_cpp

from models.llm import LocalLLM, build_prompt

SYSTEM = "You are Joe, a friendly voice assistant."


def _reply(llm: LocalLLM, question: str) -> str:
    prompt = build_prompt(SYSTEM, [{"role": "user", "content": question}])
    return "".join(llm.stream(prompt, max_tokens=24, temperature=0.0))


def test_two_contexts_share_one_model_and_answer_at_once_like_one():
    single = LocalLLM(threads=1, instances=1)
    questions = ["How far away is the moon?", "Why is the sky blue?"]
    expected = {q: _reply(single, q) for q in questions}
    assert all(expected.values())

    pool = LocalLLM(threads=2, instances=2)
    first, second = pool.contexts
    assert second._model is first._model and second._ctx is not first._ctx  # weights loaded once
    got: dict[str, str] = {}
    threads_seen: list[int] = []
    inside = threading.Barrier(2, timeout=60)

    def ask(q: str) -> None:
        prompt = build_prompt(SYSTEM, [{"role": "user", "content": q}])
        pieces = pool.stream(prompt, max_tokens=24, temperature=0.0)
        text = next(pieces)
        inside.wait()  # both replies are generating at the same time, each in its own context
        text += next(pieces, "")
        threads_seen.extend(llama_cpp.llama_n_threads(c._ctx.ctx) for c in pool.contexts)
        got[q] = text + "".join(pieces)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected  # greedy decoding: the same words as one context alone
    assert set(threads_seen) == {1}, "replies generating at once use one thread each"
    assert _reply(pool, questions[0]) == expected[questions[0]]
    assert 2 in {llama_cpp.llama_n_threads(c._ctx.ctx) for c in pool.contexts}, "a lone reply uses both"


def test_a_reply_closed_early_frees_its_context():
    pool = LocalLLM(threads=1, instances=1)
    prompt = build_prompt(SYSTEM, [{"role": "user", "content": "Tell me about elephants."}])
    pieces = pool.stream(prompt, max_tokens=24, temperature=0.0)
    next(pieces)
    pieces.close()  # a barge-in: the generation ends mid-reply
    assert _reply(pool, "How far away is the moon?")  # the only context is free again


def test_a_conversation_goes_back_to_the_context_that_holds_its_history():
    pool = LocalLLM(threads=1, instances=2)
    pool.warm_up(SYSTEM)  # as the runtime does: every context holds the fixed prompt start
    a = [{"role": "user", "content": "How far away is the moon?"}]
    b = [{"role": "user", "content": "Why is the sky blue?"}]
    for history in (a, b):  # two conversations, one context each
        history.append({"role": "assistant", "content": "".join(
            pool.stream(build_prompt(SYSTEM, history), max_tokens=16, temperature=0.0))})
    b.append({"role": "user", "content": "And at night?"})
    # B's next turn goes back to B's context (a free-for-all queue would hand it A's, whose
    # history then must be evaluated again on A's next turn), and A's history stays where it was.
    "".join(pool.stream(build_prompt(SYSTEM, b), max_tokens=16, temperature=0.0))
    held = [ctx.detokenize(ctx.input_ids[:ctx.n_tokens].tolist()).decode(errors="replace") for ctx in pool.contexts]
    assert any("How far away is the moon?" in h and "Why is the sky blue?" not in h for h in held), held
    assert any("And at night?" in h for h in held), held


def test_a_reply_uses_one_thread_while_the_analysis_thread_is_busy():
    from models.cpu import TrackedExecutor

    analysis = TrackedExecutor(1)
    release = threading.Event()
    pool = LocalLLM(threads=2, instances=1, busy_elsewhere=lambda: analysis.in_flight > 0)
    ctx = pool.contexts[0]._ctx.ctx
    job = analysis.submit(release.wait, 60)  # a Smart Turn or ASR job on the same cores
    queued = analysis.submit(lambda: None)
    assert analysis.in_flight == 2, "queued jobs count too"
    prompt = build_prompt(SYSTEM, [{"role": "user", "content": "Why is the sky blue?"}])
    pieces = pool.stream(prompt, max_tokens=24, temperature=0.0)
    next(pieces)
    assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (1, 1)
    release.set()
    job.result(10)
    queued.result(10)
    assert analysis.in_flight == 0
    next(pieces)
    assert llama_cpp.llama_n_threads(ctx) == 2, "alone again: both cores"
    pieces.close()


def test_a_lone_reply_uses_one_thread_while_another_conversation_is_live(runtime):
    """Two llama.cpp threads only for the only live conversation: another one's audio on the
    same cores interrupts one thread, and the other waits for it after every operation."""
    llm = runtime.local_llm
    prompt = build_prompt(SYSTEM, [{"role": "user", "content": "How far away is the moon?"}])

    def threads_of_a_reply() -> int:
        pieces = llm.stream(prompt, max_tokens=8, temperature=0.0)
        try:
            next(pieces)
            (ctx,) = [c for c in llm.contexts if c not in llm._free]
            return llama_cpp.llama_n_threads(ctx._ctx.ctx)
        finally:
            pieces.close()

    assert runtime.sessions.count == 0
    with runtime.sessions.live():
        assert threads_of_a_reply() == 2, "the only conversation: both cores"
        with runtime.sessions.live():
            assert runtime.sessions.count == 2
            assert threads_of_a_reply() == 1
        assert threads_of_a_reply() == 2, "alone again"
    assert runtime.sessions.count == 0
