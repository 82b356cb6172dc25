"""The turn-taking state machine driven by synthetic event streams (fast, deterministic)."""

from __future__ import annotations

import pytest

from voice.turn.completeness import completeness, is_question, is_request
from voice.turn.controller import State, TurnConfig, TurnController, is_backchannel


class Driver:
    """Feeds a controller events on a 20 ms input clock and records the actions."""

    def __init__(self, **config):
        self.c = TurnController(TurnConfig(**config))
        self.t = 0.0
        self.actions = []
        self.rev = 0

    def _take(self, actions):
        self.actions += [a for a in actions if a.kind != "state"]
        return actions

    def speak(self, seconds: float):
        self._take(self.c.on_speech_started(self.t, self.t))
        self.advance(seconds)
        self._take(self.c.on_speech_stopped(self.t, self.t))
        return self

    def transcript(self, text: str, smart_p: float | None = None):
        self.rev += 1
        self._take(self.c.on_transcript(self.t, text, self.rev, self.t + 0.1))
        if smart_p is not None:
            self._take(self.c.on_turn_probability(self.t, smart_p, self.c.speech_end))
        return self

    def advance(self, seconds: float):
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = round(self.t + 0.02, 4)
            self._take(self.c.on_tick(self.t))
        return self

    def kinds(self):
        return [a.kind for a in self.actions]

    def first(self, kind):
        return next(a for a in self.actions if a.kind == kind)


def test_text_cues():
    assert completeness("What time is it?") > 0.9
    assert completeness("I want to go to the store and") < 0.2
    assert completeness("So I was thinking, um") < 0.2
    assert is_question("I went there. Where were you?") and not is_question("Where I went was nice.")
    assert is_question("how do I get there") and not is_question("I went to the park")
    # Whisper's full stop on a question (a flat voice, Opus-coded audio): word order decides.
    assert is_question("How far away is the moon.") and is_question("Can you recommend a good book.")
    assert is_question("Where does the train leave from.") and is_question("Isn't it late.")
    assert not is_question("What I mean is that it was fine.") and not is_question("When we got there it was closed.")
    assert not is_question("The moon is far away.") and not is_question("Who knows.")
    assert completeness("How far away is the moon.") == completeness("How far away is the moon?")
    assert completeness("The moon is far away.") < completeness("How far away is the moon.")
    assert is_backchannel("Yeah.") and is_backchannel("uh-huh") and is_backchannel("I see")
    assert not is_backchannel("Yeah but what about Paris?") and not is_backchannel("")


def test_everyday_questions_ending_on_a_pronoun_or_verb_are_not_cut_offs():
    # "you", "do", "that", "for" end everyday questions; a "?" leaves them open, and
    # a confident Smart Turn makes them end after the mixed-evidence wait, not 2.5 s.
    for q in ("How are you?", "What should I do?", "Can you help me with that?", "What is this?"):
        d = Driver().speak(1.5)
        end = d.t
        d.advance(0.2).transcript(q, smart_p=0.9).advance(1.5)
        assert abs(d.first("confirm").data["t"] - end - 1.2) <= 0.021, q
        # Unpunctuated, or heard as a cut-off by Smart Turn: the turn is not over yet.
        assert completeness(q.rstrip("?")) < 0.2
        assert Driver().c.required_wait(q, 0.1) == 2.5, "Smart Turn hears a cut-off: the long wait"
    # Articles, conjunctions, "to": a "?" from the recogniser changes nothing.
    for cut in ("What do you think is the best time to?", "Is it better to rent or?", "Can I get a?",
                "I'm trying to figure out whether I should.", "Do you know how many cups of coffee are?",
                "What should I look for when I?", "Can you give me a few ideas for?"):
        assert completeness(cut) < 0.2, cut
    assert 0.2 < completeness("I think so.") < completeness("I think so?") < completeness("Where is Rome?")
    assert completeness("Yes, I can.") >= 0.5 and completeness("Here we are.") >= 0.5  # short replies
    assert is_request("I was wondering if you could help me with my homework.")
    assert is_request("I'd love a good recipe for pancakes.") and not is_request("I loved the pancakes.")


def test_complete_question_short_wait_with_speculation_confirmed():
    d = Driver().speak(2.0)
    end = d.t
    d.advance(0.2).transcript("What time is it in Tokyo?", smart_p=0.9)
    assert d.kinds() == ["speculate"], "a complete-looking turn starts the reply at once"
    d.advance(1.0)
    confirm = d.first("confirm")
    assert abs(confirm.data["t"] - end - 0.45) <= 0.021
    assert d.c.state == State.THINKING


def test_smart_turn_sure_of_a_cut_off_vetoes_the_short_wait():
    # The recogniser turned "Is it a good idea to" into a whole question; Smart Turn is
    # sure the turn goes on: the mixed-evidence wait, with the reply still speculated.
    # (A 2 s turn: the monologue term, 1.0 + 0.08 s per s of speech, stays under mid_wait_s.)
    d = Driver(smart_turn_veto_p=0.05, monologue_wait_per_s=0.08).speak(2.0)
    end = d.t
    d.advance(0.2).transcript("Is it a good idea to act?", smart_p=0.02).advance(0.5)
    assert "confirm" not in d.kinds() and "commit" not in d.kinds()
    d.advance(1.0)
    assert "speculate" in d.kinds()
    assert abs(d.first("confirm").data["t"] - end - d.c.config.mid_wait_s) <= 0.021
    # Unsure is not a veto: the short wait stands.
    assert Driver(smart_turn_veto_p=0.05).c.required_wait("Is it a good idea to act?", 0.2) \
        == TurnConfig().endpoint_silence_s
    # Off (the default): the text decides.
    assert Driver().c.required_wait("Is it a good idea to act?", 0.02) == TurnConfig().endpoint_silence_s


def test_unfinished_clause_waits_long():
    d = Driver().speak(2.0)
    end = d.t
    d.advance(0.2).transcript("I would like to book a table for", smart_p=0.05)
    d.advance(1.5)
    assert "commit" not in d.kinds() and "speculate" not in d.kinds()
    d.advance(1.5)
    assert abs(d.first("commit").data["t"] - end - 2.5) <= 0.021


def test_user_continues_after_speculation_discards_it_silently():
    d = Driver().speak(1.5).advance(0.2).transcript("Book a flight to Rome.", smart_p=0.8)
    assert d.kinds() == ["speculate"]
    d.speak(1.0)
    assert d.kinds() == ["speculate", "discard"]
    assert d.c.state == State.USER_PAUSED and d.c.speculating is None


def test_monologue_gets_backchannel_not_takeover():
    d = Driver()
    for sentence in range(5):
        d.speak(3.0).advance(0.2).transcript("And then we drove up to the lake." if sentence < 4 else
                                             "We stayed there for a week.", smart_p=0.3)
        d.advance(0.7)
    assert "backchannel" in d.kinds()
    assert "commit" not in d.kinds() and "confirm" not in d.kinds()
    bcs = [a.data["t"] for a in d.actions if a.kind == "backchannel"]
    assert all(b - a >= d.c.config.backchannel_min_interval_s for a, b in zip(bcs, bcs[1:])), "at a natural rate"


def test_no_backchannel_early_in_a_turn():
    d = Driver().speak(1.0).advance(0.2).transcript("Well so", smart_p=0.1).advance(1.5)
    assert "backchannel" not in d.kinds()


def test_long_statement_waits_longer_than_a_short_one_but_questions_do_not():
    short = Driver().speak(2.0)
    long = Driver()
    for _ in range(3):
        long.speak(3.0).advance(0.2).transcript("I told her that", smart_p=0.1).advance(0.6)
    assert short.c.required_wait("It was a sunny day.", 0.9) < long.c.required_wait("It was a sunny day.", 0.9)
    assert long.c.required_wait("Where is it?", 0.9) == long.c.config.endpoint_silence_s
    assert short.c.required_wait("Where is it?", 0.9) < short.c.required_wait("It was a sunny day.", 0.9)


def test_barge_in_then_real_interruption_is_answered():
    d = Driver().speak(1.5).advance(0.2).transcript("Tell me about Paris.", smart_p=0.9).advance(0.6)
    d._take(d.c.on_agent_audio_started(d.t))
    assert d.c.state == State.AGENT_SPEAKING
    d.advance(1.0).speak(1.2)
    assert d.kinds()[-1] == "interrupt", "user speech over the agent stops it at once"
    d.advance(0.2).transcript("Wait, what about London?", smart_p=0.9).advance(0.8)
    assert d.actions[-1].kind == "confirm" and "London" in d.actions[-1].text


def test_an_interjection_after_a_barge_in_is_not_vetoed_by_smart_turn():
    # The agent has just gone quiet mid-reply: the interjection gets the short wait even
    # where Smart Turn (on a voice it cannot judge) calls it unfinished.
    d = Driver(smart_turn_veto_p=0.05).speak(1.5).advance(0.2).transcript("Tell me about Paris.", smart_p=0.9).advance(0.6)
    d._take(d.c.on_agent_audio_started(d.t))
    d.advance(1.0).speak(1.2)
    end = d.t
    d.advance(0.2).transcript("Wait, what about London?", smart_p=0.01).advance(0.8)
    confirm = d.actions[-1]
    assert confirm.kind == "confirm" and abs(confirm.data["t"] - end - 0.45) <= 0.021
    # The next turn, begun in silence, is judged as usual again.
    d._take(d.c.on_agent_audio_started(d.t))
    d._take(d.c.on_agent_audio_stopped(d.t + 1.0))
    d.advance(1.5).speak(1.5).advance(0.2).transcript("And what about Rome?", smart_p=0.01).advance(0.8)
    assert d.actions[-1].kind == "speculate", "vetoed: waits mid_wait_s"


def test_cough_or_backchannel_over_agent_resumes_it():
    for heard in ("", "Yeah."):
        d = Driver().speak(1.5).advance(0.2).transcript("Tell me a story.", smart_p=0.9).advance(0.6)
        d._take(d.c.on_agent_audio_started(d.t))
        d.advance(1.0).speak(0.4).advance(0.1).transcript(heard, smart_p=0.5).advance(0.5)
        assert d.kinds()[-2:] == ["interrupt", "resume"], heard
        assert d.c.state == State.THINKING


def test_noise_alone_is_not_a_turn():
    d = Driver().speak(0.3).advance(0.1).transcript("").advance(1.0)
    assert d.kinds() == []
    assert d.c.state == State.LISTENING


def test_speculation_off_for_engines_that_cannot_discard():
    d = Driver(speculate=False).speak(1.5).advance(0.2).transcript("What is two plus two?", smart_p=0.9).advance(1.0)
    assert d.kinds() == ["commit"]


def test_smart_turn_is_only_needed_when_the_text_leaves_the_turn_end_open():
    c = TurnController(TurnConfig(smart_turn_veto_p=0.0))
    assert not c.smart_turn_matters("What is the capital of France?")  # complete whatever it says
    assert not c.smart_turn_matters("I went to the store and")         # unfinished whatever it says
    assert c.smart_turn_matters("We drove up to the lake.")
    assert c.smart_turn_matters("what is the best way to learn a language")
    # With the veto on, a clear question needs Smart Turn's word too.
    assert TurnController(TurnConfig(smart_turn_veto_p=0.05)).smart_turn_matters("What is the capital of France?")
    assert not TurnController(TurnConfig(smart_turn_veto_p=0.05)).smart_turn_matters("I went to the store and")
    # The skip is exact: for the texts it skips, every Smart Turn probability gives the same wait.
    for text in ("What is the capital of France?", "I went to the store and", "um"):
        assert not c.smart_turn_matters(text)
        waits = {c.required_wait(text, p) for p in (0.0, 0.3, 0.6, 1.0, None)}
        assert len(waits) == 1, (text, waits)


def test_a_discarded_speculation_leaves_no_stale_marks_in_the_turn_metrics():
    from voice.conversation import TurnMarks

    marks = TurnMarks(turn=1, speech_end=2.0)
    marks.new_generation(2.2)            # speculation
    marks.llm_first_token, marks.tts_first_audio = 2.3, 2.6
    marks.new_generation(3.5)            # discarded (the user went on); the real turn starts the LLM again
    marks.endpoint, marks.llm_first_token = 3.5, 3.6
    m = marks.metrics()
    assert m["llm_ttft"] == 0.1 and m["tts_first_audio"] is None  # nothing from the discarded start


def test_no_turn_end_while_the_vad_weighs_a_possible_next_word():
    # The user starts again just as the wait runs out: the VAD needs start_s to be
    # sure, and the agent must not take the turn in that window.
    d = Driver().speak(2.0)
    d.advance(0.2).transcript("What time is it in Tokyo?", smart_p=0.9)
    d.advance(0.2)
    d._take(d.c.on_speech_pending(d.t, d.t))
    d.advance(0.2)  # past the 0.45 s wait
    assert "confirm" not in d.kinds()
    d._take(d.c.on_speech_started(d.t, d.t - 0.12))
    assert d.kinds() == ["speculate", "discard"], "it was speech: the early reply is dropped unheard"

    # A blip that dies away (a click, a breath): the turn ends as soon as the VAD says so.
    d = Driver().speak(2.0)
    end = d.t
    d.advance(0.2).transcript("What time is it in Tokyo?", smart_p=0.9).advance(0.2)
    d._take(d.c.on_speech_pending(d.t, d.t))
    d.advance(0.2)
    assert "confirm" not in d.kinds()
    d._take(d.c.on_speech_pending(d.t, None))
    assert d.kinds() == ["speculate", "confirm"]
    assert abs(d.first("confirm").data["t"] - end - 0.6) <= 0.021


def test_no_backchannel_while_the_vad_weighs_a_possible_next_word():
    d = Driver().speak(4.0)
    d.advance(0.1).transcript("I went to the market this morning and", smart_p=0.1)
    d._take(d.c.on_speech_pending(d.t, d.t))
    d.advance(0.5)
    assert "backchannel" not in d.kinds()
    d._take(d.c.on_speech_pending(d.t, None))
    d.advance(0.1)
    assert d.kinds() == ["backchannel"]


def test_a_statement_smart_turn_is_sure_of_is_taken_like_a_question():
    cfg = dict(smart_turn_confident_p=0.9, confident_monologue_after_s=5.0, backchannels=False)
    sure = Driver(**cfg).speak(2.0).advance(0.2).transcript("I'm the marketing expert.", smart_p=0.97)
    sure.advance(1.5)
    assert sure.kinds()[-1] in ("commit", "confirm")
    assert sure.first(sure.kinds()[-1]).data["t"] - sure.c.speech_end == pytest.approx(0.46, abs=0.021)
    # Not sure enough: the statement wait, as before.
    unsure = Driver(**cfg).speak(2.0).advance(0.2).transcript("I'm the marketing expert.", smart_p=0.6)
    assert unsure.c.required_wait("I'm the marketing expert.", 0.6) >= unsure.c.config.statement_wait_s
    # Words that say the turn goes on still win over Smart Turn's confidence.
    assert unsure.c.required_wait("Training will provide a better experience with", 0.99) == unsure.c.config.max_wait_s
    # Off (the rule's threshold above 1): Smart Turn's confidence changes nothing.
    off = TurnController(TurnConfig(smart_turn_confident_p=1.01))
    assert off.required_wait("I'm the marketing expert.", 0.99) >= off.config.statement_wait_s


def test_a_sure_statement_waits_longer_deep_in_a_monologue():
    d = Driver(smart_turn_confident_p=0.9, confident_monologue_after_s=5.0, monologue_wait_per_s=0.08,
               backchannels=False)
    for _ in range(4):
        d.speak(3.0).advance(0.2).transcript("And then we drove up to the lake.", smart_p=0.2).advance(0.5)
    # 12 s of speech: 7 s past the threshold, 0.08 s each, on top of the short wait.
    wait = d.c.required_wait("We stayed there for a week.", 0.97)
    assert wait == pytest.approx(min(d.c.config.monologue_max_wait_s, 0.45 + 0.08 * 7.0))
    assert not any(k in ("commit", "confirm") for k in d.kinds())


def test_no_reply_straight_after_a_backchannel_in_the_same_pause():
    # A long turn and a pause that gets an acknowledgement; the turn then reads complete.
    d = Driver(backchannel_hold_s=1.2, monologue_wait_per_s=0.0, statement_wait_s=1.0)
    d.speak(4.0).advance(0.2).transcript("We drove up to the lake.", smart_p=0.5).advance(2.5)
    kinds = d.kinds()
    assert kinds[0] == "backchannel" and kinds[-1] in ("commit", "confirm")
    bc = d.first("backchannel").data["t"]
    end = d.first(kinds[-1]).data["t"]
    # Without the acknowledgement the statement wait (1.0 s) would end the turn; after it,
    # the agent waits backchannel_hold_s from the acknowledgement's start.
    assert end - bc >= 1.2 - 1e-6
    assert end - d.c.speech_end == pytest.approx((bc - d.c.speech_end) + 1.2, abs=0.021)
