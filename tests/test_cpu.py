"""Model threads run below the audio path (models/cpu.py, voice/runtime.py); Linux keeps nice values per thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from models.cpu import lower_thread_priority, model_executor

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread's


def test_a_lowered_thread_and_the_threads_it_starts_run_nicer_while_the_main_thread_does_not():
    base = _nice()
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = _nice()

    def lowered() -> None:
        lower_thread_priority(4)
        seen["lowered"] = _nice()
        started = threading.Thread(target=child)  # as a model's thread pool would be, created after
        started.start()
        started.join()

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == {"lowered": min(19, base + 4), "child": min(19, base + 4)}
    assert _nice() == base


def test_a_pool_started_from_a_lowered_thread_is_lowered_once_not_twice():
    base = _nice()
    with model_executor(1, "outer", 4) as outer:
        def inner_nice() -> int:
            with model_executor(1, "inner", 4) as inner:
                return inner.submit(_nice).result()

        assert outer.submit(_nice).result() == min(19, base + 4)
        assert outer.submit(inner_nice).result() == min(19, base + 4)


def test_zero_leaves_the_threads_at_the_main_threads_priority():
    with model_executor(1, "same", 0) as pool:
        assert pool.submit(_nice).result() == _nice()


_RUNTIME_PRIORITIES = """
import json, os
from voice.runtime import Runtime
from voice.settings import Settings

def threads():
    return set(os.listdir("/proc/self/task"))

def nice_of(tid):
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])
    except OSError:  # it ended while we looked (ENOENT or ESRCH): it runs at no priority
        return None

before = threads()
runtime = Runtime.load(Settings(model_nice=4))
started = {tid: nice_of(tid) for tid in threads() - before}
print(json.dumps({
    "main": os.getpriority(os.PRIO_PROCESS, 0),
    "started": {tid: n for tid, n in started.items() if n is not None},
    "reply": runtime.reply_threads.submit(os.getpriority, os.PRIO_PROCESS, 0).result(),
    "analysis": runtime.analysis.submit(os.getpriority, os.PRIO_PROCESS, 0).result(),
}))
"""


def test_runtime_models_and_their_executors_run_at_model_priority():
    """Every thread the model load starts (the models' own pools), the reply threads and the
    analysis thread run ``model_nice`` below the main thread, which runs the event loop.

    In a fresh process, so that no other test's threads start during the load."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", _RUNTIME_PRIORITIES], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    lowered = min(19, seen["main"] + 4)
    assert seen["started"]  # CTranslate2's and onnxruntime's pools, at least
    assert seen["started"] == {tid: lowered for tid in seen["started"]}
    assert seen["reply"] == lowered and seen["analysis"] == lowered
    assert seen["main"] == _nice()  # the main thread (the event loop's) is left alone


# ---------------------------------------------------------------- CpuWatch (issue 20)

def test_cpu_watch_counts_other_processes_busy_time_and_not_its_own(monkeypatch):
    """The arithmetic on /proc readings: system busy ticks minus this process's own, per second."""
    from models.cpu import CpuWatch

    watch = CpuWatch(cpus=2, start=False)
    watch._tick = 100
    readings = iter([(0.0, 0, 0), (1.0, 150, 50), (2.0, 210, 100), (3.0, 400, 100)])
    monkeypatch.setattr(watch, "_read", lambda: next(readings))
    watch._last = watch._read()
    assert watch.sample() == pytest.approx(1.0)  # 150 busy, 50 of them ours: another process had a core
    assert watch.threads_for(2) == 1
    assert watch.sample() == pytest.approx(0.1)  # our own work does not count against us
    assert watch.threads_for(2) == 2
    assert watch.sample() == pytest.approx(1.9)
    assert watch.threads_for(2) == 1, "never fewer than one thread"


def _two_cores() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    return cores[0], cores[1]


def _busy_on(core: int):
    """A shell busy loop, another process, pinned to ``core``."""
    import subprocess

    return subprocess.Popen(["sh", "-c", "while :; do :; done"], preexec_fn=lambda: os.sched_setaffinity(0, {core}))


def test_cpu_watch_sees_a_busy_neighbour_process_and_leaves_its_core_alone():
    """A real neighbour: a shell busy loop in another process on one of our two cores. While it runs,
    a 2-thread reply would have one thread share its core, so the watch allows one thread."""
    import time

    from models.cpu import CpuWatch

    a, b = _two_cores()
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {a, b})  # the watch reads the cores of the thread that builds it
    try:
        watch = CpuWatch(interval_s=0.25)
    finally:
        os.sched_setaffinity(0, saved)
    assert watch.cpus == 2
    neighbour = _busy_on(b)
    try:
        time.sleep(1.5)  # a few samples with the neighbour running (not a timing assertion)
        assert watch.others >= 0.3, watch.others
        assert watch.threads_for(2) == 1
    finally:
        neighbour.kill()
        neighbour.wait()
        watch.close()


def test_the_runtime_llm_drops_to_one_thread_while_another_process_takes_a_core():
    """voice/runtime.py wires the watch into the local LLM's thread choice: with a busy neighbour on
    one of the service's two cores, a lone reply generates on one llama.cpp thread, not two."""
    import time

    import llama_cpp

    from models.llm import build_prompt
    from voice.runtime import Runtime
    from voice.settings import Settings

    a, b = _two_cores()
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {a, b})  # the models' load thread, and the watch, inherit two cores
    try:
        runtime = Runtime.load(Settings())
    finally:
        os.sched_setaffinity(0, saved)
    llm = runtime.local_llm
    assert llm is not None and llm.threads == 2
    neighbour = _busy_on(b)
    try:
        time.sleep(1.5)
        prompt = build_prompt("You are a helpful assistant.", [{"role": "user", "content": "Why is the sky blue?"}])
        pieces = llm.stream(prompt, max_tokens=8, temperature=0.0)
        next(pieces)
        assert llama_cpp.llama_n_threads(llm.contexts[0]._ctx.ctx) == 1
        pieces.close()
    finally:
        neighbour.kill()
        neighbour.wait()
