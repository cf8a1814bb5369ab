"""From a prompt to a musical plan: mood, tempo, key, scale, chords. Pure and deterministic.

Words in the prompt steer the choices a listener would notice (slow for "calm", fast for "energetic",
minor for "sad"/"dark"); everything the words leave open is chosen from a hash of the prompt, so one prompt
always sounds the same and different prompts sound different."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
MAJOR_PENTATONIC = (0, 2, 4, 7, 9)
MINOR_PENTATONIC = (0, 3, 5, 7, 10)

# Chord roots as scale-degree indexes into the 7-note scale, one chord per bar.
MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (0, 3, 0, 4))
MINOR_PROGRESSIONS = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 5, 3, 4), (0, 6, 5, 6))

_SLOW = {
    "calm",
    "slow",
    "ambient",
    "relaxing",
    "relaxed",
    "peaceful",
    "sleep",
    "chill",
    "lofi",
    "lo-fi",
    "meditation",
    "meditative",
    "gentle",
    "soft",
    "dreamy",
    "lullaby",
    "serene",
    "quiet",
}
_FAST = {
    "energetic",
    "fast",
    "upbeat",
    "dance",
    "party",
    "workout",
    "intense",
    "epic",
    "driving",
    "action",
    "exciting",
    "hype",
    "techno",
    "edm",
    "drum",
    "running",
    "aggressive",
    "frantic",
}
_MINOR = {
    "sad",
    "dark",
    "melancholy",
    "melancholic",
    "somber",
    "sombre",
    "moody",
    "gloomy",
    "tragic",
    "horror",
    "mysterious",
    "tense",
    "eerie",
    "haunting",
    "grief",
    "lonely",
    "minor",
    "noir",
}
_MAJOR = {
    "happy",
    "bright",
    "joyful",
    "uplifting",
    "cheerful",
    "sunny",
    "hopeful",
    "triumphant",
    "playful",
    "major",
    "celebration",
    "festive",
}
_BPM = re.compile(r"\b(\d{2,3})\s*bpm\b")
_WORD = re.compile(r"[a-z][a-z\-]*")


@dataclass(frozen=True, slots=True)
class Composition:
    seed: int
    mood: str  # calm | energetic | neutral
    minor: bool
    tempo_bpm: int
    root_midi: int  # tonic of the melody's octave
    scale: tuple[int, ...]  # semitone offsets of the heptatonic scale used for chords
    melody_scale: tuple[int, ...]  # the (possibly pentatonic) scale the melody walks on
    progression: tuple[int, ...]
    brightness: float  # 0..1: how much upper harmonic the lead voice carries

    @property
    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.root_midi % 12]} {'minor' if self.minor else 'major'}"

    def describe(self) -> dict[str, object]:
        return {"key": self.key_name, "tempo_bpm": self.tempo_bpm, "mood": self.mood}


def prompt_seed(prompt: str) -> int:
    normalised = " ".join(prompt.lower().split())
    return int.from_bytes(hashlib.sha256(normalised.encode()).digest()[:8], "big")


def analyze(prompt: str) -> Composition:
    seed = prompt_seed(prompt)
    words = set(_WORD.findall(prompt.lower()))
    slow, fast = len(words & _SLOW), len(words & _FAST)
    mood = "calm" if slow > fast else "energetic" if fast > slow else "neutral"
    # Independent bit fields of the seed, so e.g. key and tempo are not correlated.
    pick = SeededRandom(seed)
    explicit = _BPM.search(prompt.lower())
    if explicit:
        tempo = min(max(int(explicit.group(1)), 40), 220)
    else:
        low, high = {"calm": (60, 80), "energetic": (120, 150), "neutral": (88, 112)}[mood]
        tempo = low + pick.below(high - low + 1)
    minor_votes, major_votes = len(words & _MINOR), len(words & _MAJOR)
    minor = minor_votes > major_votes if minor_votes != major_votes else pick.below(2) == 1
    root = 57 + pick.below(12)  # A3..G#4: comfortable for a lead voice
    scale = MINOR if minor else MAJOR
    pentatonic = mood == "calm" or pick.below(3) == 0
    melody_scale = (MINOR_PENTATONIC if minor else MAJOR_PENTATONIC) if pentatonic else scale
    progressions = MINOR_PROGRESSIONS if minor else MAJOR_PROGRESSIONS
    progression = progressions[pick.below(len(progressions))]
    brightness = {"calm": 0.15, "neutral": 0.35, "energetic": 0.6}[mood] + pick.below(10) / 100
    return Composition(seed, mood, minor, tempo, root, scale, melody_scale, progression, brightness)


class SeededRandom:
    """Successive small choices from one seed (SplitMix64). Not ``random.Random``: its algorithms for
    choices and ranges are not promised to stay the same across Python versions, and the audio must."""

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def unit(self) -> float:
        return (self.next() >> 11) / float(1 << 53)
