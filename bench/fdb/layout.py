"""Full-Duplex-Bench v1 folder layout: read samples, write the output tree.

A task folder holds one numbered folder per sample::

    <task>/<n>/input.wav            user audio (16-bit mono)
    <task>/<n>/pause.json           pause_handling:     [{"text": "[PAUSE]", "timestamp": [s, e]}]
    <task>/<n>/turn_taking.json     smooth_turn_taking: [{"text": "[TURN-TAKING]", "timestamp": [s, e]}]
    <task>/<n>/interrupt.json       user_interruption:  [{"context", "interrupt", "timestamp": [s, e]}]
                                    backchannel:        input.wav only

A data directory may hold the task folders under their plain names
(``pause_handling``) or under the published dataset's names
(``synthetic_pause_handling``, ``candor_pause_handling``, ``candor_turn_taking``,
``synthetic_user_interruption``, ``icc_backchannel``): every folder whose name
ends with a task name is a set of that task, so the synthetic and Candor pause
sets are scored apart, as in the published table. DATA_DIR may also be one
task folder itself.

The output tree mirrors the input: ``OUT/<set>/<n>/`` with input.wav and the
metadata copied, plus output.wav, output.json and events.jsonl.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASKS = ("pause_handling", "smooth_turn_taking", "user_interruption", "backchannel")

META_FILE = {
    "pause_handling": "pause.json",
    "smooth_turn_taking": "turn_taking.json",
    "user_interruption": "interrupt.json",
    "backchannel": None,
}

# Folder-name endings that identify a task set (the published names end with these).
_SUFFIXES = {
    "pause_handling": ("pause_handling",),
    "smooth_turn_taking": ("smooth_turn_taking", "turn_taking"),
    "user_interruption": ("user_interruption",),
    "backchannel": ("backchannel",),
}

INPUT_WAV = "input.wav"
OUTPUT_WAV = "output.wav"
OUTPUT_JSON = "output.json"
EVENTS = "events.jsonl"


class BenchError(ValueError):
    """A benchmark input or configuration problem, reported as one line."""


@dataclass(frozen=True)
class TaskSet:
    task: str   # one of TASKS
    name: str   # folder name, e.g. "candor_pause_handling"
    path: Path


@dataclass(frozen=True)
class Sample:
    task: str
    set_name: str
    name: str           # the numbered folder's name
    path: Path
    meta: list | None   # parsed task metadata (None for backchannel)

    @property
    def input_wav(self) -> Path:
        return self.path / INPUT_WAV

    @property
    def reference_time(self) -> float | None:
        """The time latency is measured from: ``s`` of turn_taking.json, ``e`` of interrupt.json."""
        if self.task == "smooth_turn_taking":
            return float(self.meta[0]["timestamp"][0])
        if self.task == "user_interruption":
            return float(self.meta[0]["timestamp"][1])
        return None


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BenchError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"malformed JSON in {path}: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"cannot read {path}: {e}") from None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def task_of(folder_name: str) -> str | None:
    """The task a folder name denotes, or None."""
    low = folder_name.lower()
    for task, suffixes in _SUFFIXES.items():
        if any(low == s or low.endswith("_" + s) or low.endswith("-" + s) for s in suffixes):
            return task
    return None


def _sample_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def find_task_sets(data_dir: str | Path, tasks: list[str] | tuple[str, ...] = TASKS) -> list[TaskSet]:
    """Every task set under ``data_dir`` for the requested tasks (BenchError if none)."""
    root = Path(data_dir)
    if not root.exists():
        raise BenchError(f"data folder not found: {root}")
    if not root.is_dir():
        raise BenchError(f"data path is not a folder: {root}")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise BenchError(f"unknown task {bad[0]!r}; choose from {', '.join(TASKS)}")
    own = task_of(root.name)
    if own is not None and _sample_dirs(root):
        if own not in tasks:
            raise BenchError(f"{root} is a {own} folder, but the tasks asked for are {', '.join(tasks)}")
        return [TaskSet(own, root.name, root)]
    found = []
    for child in sorted(root.iterdir()):
        task = task_of(child.name) if child.is_dir() else None
        if task in tasks:
            found.append(TaskSet(task, child.name, child))
    if not found:
        raise BenchError(f"no task folder for {', '.join(tasks)} in {root} "
                         f"(expected sub-folders named like {tasks[0]})")
    return found


def _check_meta(task: str, meta: Any, path: Path) -> list:
    if not isinstance(meta, list) or not meta or not isinstance(meta[0], dict):
        raise BenchError(f"{path} must be a JSON list with one object")
    ts = meta[0].get("timestamp")
    if (not isinstance(ts, list) or len(ts) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ts)):
        raise BenchError(f"{path}: 'timestamp' must be a list of two numbers [start, end]")
    if task == "user_interruption":
        for key in ("context", "interrupt"):
            if not isinstance(meta[0].get(key), str):
                raise BenchError(f"{path}: missing text field {key!r}")
    return meta


def read_samples(task_set: TaskSet) -> list[Sample]:
    """The samples of one task set, in numeric order; BenchError on any malformed sample."""
    dirs = _sample_dirs(task_set.path)
    if not dirs:
        raise BenchError(f"no numbered sample folders in {task_set.path}")
    meta_name = META_FILE[task_set.task]
    samples = []
    for d in dirs:
        if not (d / INPUT_WAV).is_file():
            raise BenchError(f"sample {d} has no {INPUT_WAV}")
        meta = None
        if meta_name is not None:
            mp = d / meta_name
            if not mp.is_file():
                raise BenchError(f"sample {d} has no {meta_name}")
            meta = _check_meta(task_set.task, read_json(mp), mp)
        samples.append(Sample(task_set.task, task_set.name, d.name, d, meta))
    return samples


def output_dir(out_root: str | Path, sample: Sample) -> Path:
    return Path(out_root) / sample.set_name / sample.name


def prepare_output(out_root: str | Path, sample: Sample) -> Path:
    """Create ``OUT/<set>/<n>/`` with input.wav and the metadata copied; return it."""
    dest = output_dir(out_root, sample)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (INPUT_WAV, META_FILE[sample.task]):
        if name is not None and (sample.path / name).resolve() != (dest / name).resolve():
            shutil.copyfile(sample.path / name, dest / name)
    return dest
