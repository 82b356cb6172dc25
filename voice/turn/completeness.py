"""Does the transcript so far read like a finished turn? Cheap text cues."""

from __future__ import annotations

import re

# A turn that stops on one of these is almost never finished, whatever the
# recogniser's punctuation says (it often puts "?" or "." on a cut-off clause:
# "...is the best time to?").
STRONG_CONTINUATIONS = {
    "and", "but", "or", "because", "cause", "if", "than", "whether", "to", "of", "between",
    "the", "a", "an", "my", "your", "our", "their", "its", "it's", "what's", "as",
    "um", "uh", "er", "erm", "hmm",
    # Prepositions end a few questions ("Who is it for?") but far more cut-offs
    # ("Can you give me a few ideas for", "How should I go about").
    "for", "with", "in", "on", "at", "from", "about",
}
# Verbs and subjects that end a clause only in a short reply ("Yes, I can.",
# "Here we are."): at the end of a longer turn they are a cut-off
# ("...whether I should", "...how many cups of coffee are").
CLAUSE_CUTS = {
    "is", "are", "was", "were", "be", "am", "should", "could", "would", "can", "will", "might",
    "must", "may", "shall", "i", "we", "they", "he", "she",
}
SHORT_REPLY_WORDS = 4
# These usually continue the turn too, but also end everyday questions and
# statements ("How are you?", "What should I do?", "Can you do that?", "I think so."):
# unfinished when unpunctuated, open (left to Smart Turn) when punctuated.
WEAK_CONTINUATIONS = {
    "so", "then", "that", "which", "who", "when", "where", "while", "this", "these", "you", "like",
    "maybe", "also", "just", "do", "does", "did", "how",
}

_WORD = re.compile(r"[a-z']+")


def last_words(text: str, n: int = 2) -> list[str]:
    return _WORD.findall(text.lower())[-n:]


def _trailing(text: str) -> str | None:
    """How the turn's last word bears on it: "strong" (it goes on), "weak" (it may), or None."""
    words = _WORD.findall(last_sentence(text).lower())
    if not words:
        return None
    last = words[-1]
    if last in STRONG_CONTINUATIONS:
        return "strong"
    if last in CLAUSE_CUTS:
        return "weak" if len(words) <= SHORT_REPLY_WORDS else "strong"
    return "weak" if last in WEAK_CONTINUATIONS else None


def ends_open(text: str) -> bool:
    """A punctuated turn that stops on a word that may or may not end it ("...do?", "...you.").

    The words cannot settle it; the caller should let the acoustic model decide.
    """
    stripped = text.strip()
    return _trailing(stripped) == "weak" and stripped.endswith(("?", ".", "!"))


def completeness(text: str) -> float:
    """0 = clearly unfinished, 1 = clearly finished; 0.5 = no evidence either way."""
    stripped = text.strip()
    if not stripped:
        return 0.0
    if stripped.endswith(("...", "…", ",", "-", "—")):
        return 0.1
    trailing = _trailing(stripped)
    if trailing == "strong":
        return 0.15
    if trailing == "weak":
        if stripped.endswith("?"):
            return 0.6   # "What should I do?" or a cut-off "...when I go to?"
        if stripped.endswith((".", "!")):
            return 0.5
        return 0.15
    if stripped.endswith(("?", "!")):
        return 0.95
    if stripped.endswith("."):
        return 0.95 if is_question(stripped) else 0.8  # a question, whatever the recogniser's punctuation
    if _QUESTION_START.match(last_sentence(stripped).lower()):
        return 0.75  # an unpunctuated question that does not stop on a function word
    return 0.5


_QUESTION_START = re.compile(
    r"^(what|what's|whats|who|who's|where|when|why|how|which|can|could|would|will|should|shall|"
    r"is|are|am|do|does|did|have|has|was|were|may|tell me)\b")


def last_sentence(text: str) -> str:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p.strip()]
    return parts[-1] if parts else ""


_AUX = r"(is|are|am|was|were|do|does|did|can|could|would|will|should|shall|has|have|had|may|might|must)"
# Word order settles a question where punctuation cannot: a question word, then
# (after at most a few words, none of them a subject pronoun) an auxiliary
# verb, as in "how far away is the moon", "what time does it open"; or an
# auxiliary first, then its subject, as in "can you ...", "is there ...".
# "What I mean is ...", "When we got there ..." are not inverted.
_INVERTED = re.compile(
    r"^(?:(what|who|where|when|why|how|which)(?: (?!(?:i|you|we|they|he|she|it)\b)[a-z']+){0,4} " + _AUX + r"\b"
    r"|" + _AUX + r"(?:n't)? (i|you|we|they|he|she|it|there|the|a|an|this|that|these|those|my|your|our|any|anyone|someone|anything)\b)")


def is_question(text: str) -> bool:
    """Does the turn end on a question (by punctuation, by word order, or by its opening words)?

    Whisper's punctuation follows the speaker's pitch and is often wrong on a
    flat or unusual voice ("How far away is the moon."), so an inverted
    question counts even when it ends on a full stop.
    """
    last = last_sentence(text).lower()
    if last.endswith("?"):
        return True
    if last.endswith((".", "!")):
        return bool(_INVERTED.match(last.rstrip(".!")))
    return bool(_QUESTION_START.match(last))


_REQUEST_START = re.compile(
    r"^(please|tell|give|show|find|set|play|call|book|help|remind|explain|describe|recommend|suggest|"
    r"let's|lets|let me know|i'd like|i would like|i'd love|i would love|i want|i need|i'm looking for|"
    r"i am looking for|i was wondering|i wonder|any idea|any ideas|"
    r"can you|could you|would you|will you|what about|how about)\b")


def is_request(text: str) -> bool:
    """A question or a request ("tell me...", "I'd like...", "please..."): it asks for a reply.

    Narration ("we drove up to the lake.") does not, and in a long turn it is
    usually followed by more narration: it gets a longer wait.
    """
    last = last_sentence(text).lower().lstrip("\"' ")
    return is_question(text) or bool(_REQUEST_START.match(last)) or last.endswith("please.")
