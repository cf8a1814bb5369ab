"""Rewriting a refused prompt into an instrumental-only, provider-safe one. Pure and idempotent.

Providers refuse prompts that name artists or ask for (copyrighted) lyrics. The rewrite drops quoted text
(titles, lyrics), whatever part of a clause asks for vocals or lyrics, and references to named people
("in the style of ...", "like Some Artist", "by Some Band"), then says "instrumental" explicitly. It
cannot know every artist's name; a provider's own suggestion, when it sends one, is preferred."""

from __future__ import annotations

import re

FALLBACK_PROMPT = "calm instrumental music"

_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|‘[^’]*’|(?<!\w)'[^']*'(?!\w)")
_VOCAL_REQUEST = re.compile(
    # An optional lead-in ("with female", "and some") so the connector goes with the request.
    r"(?:\b(?:with|and|plus|having|featuring|including)\s+(?:\w+\s+){0,2}?)?"
    r"\b(lyric|lyrics|lyrical|sing|sings|singing|sung|singer|vocal|vocals|vocalist|voice|rap|rapping|"
    r"verse|verses|words|karaoke|acapella|a cappella|choir)\b",
    re.IGNORECASE,
)
# A style reference runs to the end of its clause, whatever case the name is written in.
_STYLE_REFERENCE = re.compile(
    r"\b(in the (?:style|vein|manner) of|inspired by|sounds? like|similar to|reminiscent of|"
    r"featuring|feat\.?|ft\.?|cover of|covering|performed by|produced by|written by|composed by)\b.*",
    re.IGNORECASE,
)
_CAPITALISED_NAME = r"[A-Z][\w'’.&-]*(?:\s+(?:[A-Z][\w'’.&-]*|&|and|the|of|de|la|van|von))*"
# "like" / "by" only count when a capitalised name follows: "like rain" is imagery, "like Adele" is not.
_NAMED_REFERENCE = re.compile(rf"\b(?:like|by|from)\s+{_CAPITALISED_NAME}")
_NAME_STYLE = re.compile(rf"\b{_CAPITALISED_NAME}[-\s](?:style|esque|like|inspired)\b")
_SPACES = re.compile(r"\s+")


def safe_rewrite(prompt: str) -> str:
    text = _QUOTED.sub(" ", prompt)
    kept: list[str] = []
    for clause in re.split(r"[,;\n]+", text):
        vocal = _VOCAL_REQUEST.search(clause)
        if vocal is not None:
            # Everything from the request for vocals on goes ("... song with sad lyrics about ...").
            clause = clause[: vocal.start()]
        clause = _STYLE_REFERENCE.sub(" ", clause)
        clause = _NAME_STYLE.sub(" ", clause)
        clause = _NAMED_REFERENCE.sub(" ", clause)
        clause = _SPACES.sub(" ", clause).strip(" .:-–—")
        if clause:
            kept.append(clause)
    result = ", ".join(kept) if kept else FALLBACK_PROMPT
    if "instrumental" not in result.lower():
        result = f"{result}, instrumental"
    return result
