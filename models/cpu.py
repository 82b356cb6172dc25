"""CPU sharing between the models and the audio path on a few cores.

Model priority (``model_nice``, off by default): :func:`lower_thread_priority`
makes the threads that run inference nicer than the event loop, which moves
every session's audio (Opus, RTP, the 20 ms frames). With the cores full,
packets then leave on time and replies start later.

Speech first: on a few cores, the synthesis a listener waits for outranks the LLM.

The LLM produces text far faster than it is spoken (tens of tokens per second
against about three words per second), yet it runs on the same cores as Piper.
While it races ahead, the synthesis of the piece the listener is waiting for
takes twice as long. So the LLM pauses between tokens while any synthesis is
running; it never pauses longer than ``max_wait_s`` at a time, so a stuck
synthesis cannot starve it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager


def lower_thread_priority(nice: int) -> None:
    """Run the calling thread, and the threads it starts from now on, ``nice`` steps below the main thread.

    Linux keeps a nice value per thread and a new thread inherits its creator's,
    so a model's thread pools, created on a thread lowered first, run lowered
    too. Elsewhere ``setpriority`` would lower the whole process, audio path
    included, so this does nothing there.
    """
    if nice <= 0 or sys.platform != "linux":
        return
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # on Linux: the main thread's nice value
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, base + nice))
    except OSError:  # a sandbox that forbids it: run at the normal priority
        pass


def model_executor(workers: int, name: str, nice: int, executor=ThreadPoolExecutor):
    """A thread pool whose threads run at model priority (see :func:`lower_thread_priority`)."""
    return executor(workers, thread_name_prefix=name, initializer=lower_thread_priority, initargs=(nice,))


class SpeechFirst:
    def __init__(self, max_wait_s: float = 0.5):
        self.max_wait_s = max_wait_s
        self._busy = 0
        self._cond = threading.Condition()

    @contextmanager
    def speaking(self) -> Iterator[None]:
        """Hold around one synthesis step."""
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                if self._busy == 0:
                    self._cond.notify_all()

    def wait_turn(self) -> bool:
        """Called by the LLM between tokens: wait (bounded) while speech is being synthesised.

        True when no synthesis is running on return, False when the bound cut the wait short.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout=self.max_wait_s)


class TrackedExecutor(ThreadPoolExecutor):
    """A thread pool that knows how many jobs it holds (queued or running).

    The pause-time analysis (ASR, Smart Turn) runs on one of these; the LLM reads
    ``in_flight`` to pick its thread count. llama.cpp's threads meet at a barrier
    after every operation: two of them next to a busy analysis thread on 2 cores
    wait for each other, and the first token came 130 ms after the prompt instead
    of 40 (81 ms on one thread).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _finished(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def _run(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            self._finished()  # before the future completes: whoever waits on it sees the count

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._count_lock:
            self._in_flight += 1
        try:
            future = super().submit(self._run, fn, args, kwargs)
        except BaseException:
            self._finished()
            raise
        future.add_done_callback(lambda f: f.cancelled() and self._finished())  # never ran
        return future


class CpuWatch:
    """How many cores other processes keep busy, read from /proc every ``interval_s`` (Linux).

    The models size their thread pools for the whole machine. When another
    process takes one of two cores, a reply generating on two llama.cpp threads
    has one of them share a core with it: the threads meet at a barrier after
    every operation, and each meeting then waits for the scheduler to hand that
    thread its slice back. :meth:`free_cores` lets a reply use only the cores
    nobody else is using. A daemon thread samples the busy time of the cores
    this process may run on (``/proc/stat``'s per-core lines, the affinity mask)
    minus this process's own (``/proc/self/stat``); off Linux, or if ``/proc``
    cannot be read, every core counts as free.
    """

    def __init__(self, interval_s: float = 0.5, cpus: int | None = None, start: bool = True):
        self.interval_s = interval_s
        try:  # the cores this process may run on (a container's cpuset too); /proc/stat is read for those only
            self._allowed: set[int] | None = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._allowed = None
        self.cpus = cpus or (len(self._allowed) if self._allowed else os.cpu_count() or 1)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.others = 0.0  # cores busy with other processes over the last interval
        self._last = self._read()
        self._stop = threading.Event()
        self._thread = None
        if start and self._last is not None:
            self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)
            self._thread.start()

    def _read(self) -> tuple[float, int, int] | None:
        """(monotonic time, busy ticks of the cores we may use, this process's ticks), or None without /proc."""
        import time

        try:
            busy = 0
            with open("/proc/stat") as f:
                for line in f:
                    name, *fields = line.split()
                    if not name.startswith("cpu") or name == "cpu":
                        continue
                    if not name[3:].isdigit():
                        break
                    if self._allowed is not None and int(name[3:]) not in self._allowed:
                        continue
                    vals = [int(v) for v in fields[:8]]
                    busy += sum(vals) - vals[3] - vals[4]  # all but idle and iowait
            with open("/proc/self/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            own = int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, own

    def sample(self) -> float:
        """Take a reading now; returns (and keeps) the cores other processes used since the last one."""
        cur = self._read()
        if cur is None or self._last is None:
            return self.others
        dt = (cur[0] - self._last[0]) * self._tick
        if dt > 0:
            self.others = max(0.0, ((cur[1] - self._last[1]) - (cur[2] - self._last[2])) / dt)
        self._last = cur
        return self.others

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def free_cores(self) -> float:
        return max(0.0, self.cpus - self.others)

    def threads_for(self, wanted: int) -> int:
        """``wanted`` threads, but no more than the cores others leave free (at least one)."""
        return max(1, min(wanted, int(self.free_cores() + 0.3)))

    def close(self) -> None:
        self._stop.set()
