"""Per-session conversation state: what the user said, what the agent actually got to say."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TurnMarks:
    """Input-clock times of one turn's milestones, for the per-turn latency record."""

    turn: int
    user_text: str = ""
    speech_end: float | None = None
    endpoint: float | None = None
    asr_seconds: float | None = None
    llm_start: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    agent_audio_start: float | None = None
    reported: bool = False

    def new_generation(self, t: float) -> None:
        """The LLM starts (again) for this turn: what an earlier, discarded start produced is void."""
        self.llm_start = t
        self.llm_first_token = None
        self.tts_first_audio = None

    def metrics(self) -> dict:
        def gap(a, b):
            return None if a is None or b is None else round(a - b, 4)
        return {
            "endpoint_delay": gap(self.endpoint, self.speech_end),
            "asr_time": None if self.asr_seconds is None else round(self.asr_seconds, 4),
            "llm_ttft": gap(self.llm_first_token, self.llm_start),
            "tts_first_audio": gap(self.tts_first_audio, self.llm_first_token),
            "voice_to_voice": gap(self.agent_audio_start, self.speech_end),
        }


@dataclass
class Conversation:
    system_prompt: str
    max_messages: int = 40
    history: list[dict] = field(default_factory=list)
    marks: dict[int, TurnMarks] = field(default_factory=dict)
    current_turn: int = 0
    reply_generated: str = ""   # everything the engine produced for the current reply
    reply_played: str = ""      # the part of it the listener heard

    def start_reply(self) -> None:
        self.reply_generated = ""
        self.reply_played = ""

    def add_generated(self, text: str) -> None:
        self.reply_generated += text

    def unplayed_remainder(self) -> str:
        """What the agent had still to say when it was cut off (from the cut clause on)."""
        generated = " ".join(self.reply_generated.split())
        played = " ".join(self.reply_played.split())
        if played and generated.startswith(played):
            return generated[len(played):].strip()
        return generated if not played else ""

    def reopen_agent_turn(self) -> None:
        if self.history and self.history[-1]["role"] == "assistant":
            self.history[-1].pop("closed", None)
            self.history[-1].pop("interrupted", None)

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._trim()

    def add_tool_messages(self, messages: list[dict]) -> None:
        """An assistant ``tool_calls`` message and its ``tool`` results (voice/tools/calls.py)."""
        for m in messages:
            self.history.append({**m, "closed": True})
        self._trim()

    def add_agent_text(self, text: str) -> None:
        """Append text the listener actually heard (called as audio plays, piece by piece)."""
        text = text.strip()
        if not text:
            return
        self.reply_played += " " + text
        last = self.history[-1] if self.history else None
        if last is not None and last["role"] == "assistant" and not last.get("closed") and "tool_calls" not in last:
            self.history[-1]["content"] += " " + text
        else:
            self.history.append({"role": "assistant", "content": text})
        self._trim()

    def close_agent_turn(self, interrupted: bool = False) -> None:
        if self.history and self.history[-1]["role"] == "assistant":
            self.history[-1]["closed"] = True
            if interrupted:
                self.history[-1]["interrupted"] = True

    def messages(self) -> list[dict]:
        """Chat messages for the LLM: system prompt first, then the conversation.

        Tool messages keep their ``tool_calls`` / ``tool_call_id``; a ``tool`` result whose
        call was trimmed away is left out (the API refuses one without its call).
        """
        out = [{"role": "system", "content": self.system_prompt}]
        calls: set[str] = set()
        for m in self.history:
            msg = {"role": m["role"], "content": m["content"]}
            if m.get("tool_calls"):
                msg["tool_calls"] = m["tool_calls"]
                calls.update(c["id"] for c in m["tool_calls"])
            if m["role"] == "tool":
                if m.get("tool_call_id") not in calls:
                    continue
                msg["tool_call_id"] = m["tool_call_id"]
            out.append(msg)
        return out

    def mark(self, turn: int) -> TurnMarks:
        if turn not in self.marks:
            self.marks[turn] = TurnMarks(turn=turn)
        return self.marks[turn]

    def _trim(self) -> None:
        if len(self.history) > self.max_messages:
            del self.history[: len(self.history) - self.max_messages]
