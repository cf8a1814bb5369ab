"""Synthesis of a Composition into 16-bit PCM mono at 44.1 kHz, block by block. Pure and deterministic.

Three voices: a soft chord pad, a bass on the chord roots and a melody walking the scale. Each note reads
a one-period wavetable of its timbre (cheaper than calling sin per harmonic per sample) under a linear
attack/release envelope; the mix is soft-clipped with a fixed gain instead of normalised, so every block
can be rendered on its own (progress as it renders) and the bytes never depend on the block size."""

from __future__ import annotations

import io
import math
import wave
from array import array
from bisect import bisect_left
from dataclasses import dataclass

from .composition import Composition, SeededRandom

SAMPLE_RATE = 44100
SAMPLE_WIDTH = 2  # bytes: 16-bit PCM
CHANNELS = 1
_TABLE_SIZE = 4096
_TABLE_MASK = _TABLE_SIZE - 1
_FADE_SECONDS = 0.05  # at both ends of the track, so it starts and stops without a click


def _wavetable(harmonics: tuple[tuple[int, float], ...]) -> tuple[float, ...]:
    norm = sum(weight for _, weight in harmonics) or 1.0
    return tuple(
        sum(weight * math.sin(2 * math.pi * k * i / _TABLE_SIZE) for k, weight in harmonics) / norm
        for i in range(_TABLE_SIZE)
    )


@dataclass(frozen=True, slots=True)
class Note:
    start: int  # first frame
    length: int  # frames
    midi: int
    amp: float
    attack: int  # frames
    release: int  # frames
    voice: str  # pad | bass | lead


def frames_for(duration_seconds: float) -> int:
    return max(1, round(duration_seconds * SAMPLE_RATE))


def midi_to_hz(midi: int) -> float:
    return float(440.0 * 2 ** ((midi - 69) / 12))


def _scale_note(comp: Composition, scale: tuple[int, ...], degree: int, octave_shift: int = 0) -> int:
    octave, index = divmod(degree, len(scale))
    return comp.root_midi + scale[index] + 12 * (octave + octave_shift)


def plan_notes(comp: Composition, total_frames: int) -> list[Note]:
    """Every note of the piece, sorted by start frame."""
    rng = SeededRandom(comp.seed ^ 0x5EED_CAFE)
    beat = max(1, round(SAMPLE_RATE * 60 / comp.tempo_bpm))
    bar = 4 * beat
    # Energetic pieces move in eighth notes, the rest in quarters.
    step = beat // 2 if comp.mood == "energetic" else beat
    rest_chance = {"calm": 30, "neutral": 18, "energetic": 10}[comp.mood]
    notes: list[Note] = []
    melody_index = len(comp.melody_scale)  # start on the tonic an octave up
    bar_start = 0
    bar_number = 0
    while bar_start < total_frames:
        degree = comp.progression[bar_number % len(comp.progression)]
        for offset in (0, 2, 4):  # a triad on the chord root
            notes.append(
                Note(
                    bar_start,
                    bar,
                    _scale_note(comp, comp.scale, degree + offset),
                    0.07,
                    bar // 3,
                    bar // 3,
                    "pad",
                )
            )
        bass = _scale_note(comp, comp.scale, degree, octave_shift=-2)
        for half in (0, bar // 2):
            notes.append(Note(bar_start + half, bar // 2, bass, 0.2, beat // 16 + 1, beat // 4, "bass"))
        for start in range(bar_start, bar_start + bar, step):
            if rng.below(100) < rest_chance:
                continue
            # A bounded random walk: mostly steps, sometimes a leap, kept within two octaves.
            move = (-2, -1, -1, 0, 1, 1, 2, 3)[rng.below(8)]
            melody_index = min(max(melody_index + move, 0), 2 * len(comp.melody_scale))
            held = step * (2 if rng.below(5) == 0 else 1)
            notes.append(
                Note(
                    start,
                    held,
                    _scale_note(comp, comp.melody_scale, melody_index),
                    0.16,
                    max(1, step // 12),
                    max(1, step // 3),
                    "lead",
                )
            )
        bar_start += bar
        bar_number += 1
    clipped = [n for n in notes if n.start < total_frames]
    clipped.sort(key=lambda n: n.start)
    return clipped


class Renderer:
    """Renders blocks of one planned piece; blocks may be rendered in any order or size."""

    def __init__(self, comp: Composition, total_frames: int) -> None:
        self.total_frames = total_frames
        self.notes = plan_notes(comp, total_frames)
        self._starts = [n.start for n in self.notes]
        self._longest = max((n.length for n in self.notes), default=0)
        self._tables = {
            "pad": _wavetable(((1, 1.0), (2, 0.15))),
            "bass": _wavetable(((1, 1.0), (2, 0.35), (3, 0.1))),
            "lead": _wavetable(
                ((1, 1.0), (2, comp.brightness), (3, comp.brightness / 2), (5, comp.brightness / 6))
            ),
        }

    def render(self, start: int, end: int) -> bytes:
        """16-bit little-endian PCM for frames [start, end)."""
        end = min(end, self.total_frames)
        mix = [0.0] * (end - start)
        first = bisect_left(self._starts, start - self._longest)
        last = bisect_left(self._starts, end)
        for note in self.notes[first:last]:
            self._add(mix, note, start, end)
        fade = round(_FADE_SECONDS * SAMPLE_RATE)
        out = array("h")
        for offset, value in enumerate(mix):
            frame = start + offset
            gain = min(1.0, (frame + 1) / fade, (self.total_frames - frame) / fade)
            out.append(round(math.tanh(value * 1.4) * 0.85 * gain * 32767))
        if out.itemsize != SAMPLE_WIDTH:
            raise RuntimeError("array('h') is not 16-bit on this platform")
        return out.tobytes() if _little_endian() else _swapped(out)

    def _add(self, mix: list[float], note: Note, start: int, end: int) -> None:
        lo = max(note.start, start)
        hi = min(note.start + note.length, end)
        if lo >= hi:
            return
        table = self._tables[note.voice]
        step = midi_to_hz(note.midi) * _TABLE_SIZE / SAMPLE_RATE
        amp, attack, release, length = note.amp, note.attack, note.release, note.length
        for frame in range(lo, hi):
            t = frame - note.start
            if t < attack:
                env = t / attack
            elif t > length - release:
                env = (length - t) / release
            else:
                env = 1.0
            # Phase from the note's own frame count, not an accumulator: no drift, same value in any block.
            mix[frame - start] += amp * env * table[int(t * step) & _TABLE_MASK]


def _little_endian() -> bool:
    return array("h", [1]).tobytes()[0] == 1


def _swapped(samples: array[int]) -> bytes:
    copy = array("h", samples)
    copy.byteswap()
    return copy.tobytes()


def wav_bytes(pcm: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(CHANNELS)
        out.setsampwidth(SAMPLE_WIDTH)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


def render_wav(comp: Composition, duration_seconds: float) -> bytes:
    """The whole piece at once (the provider renders in blocks to report progress)."""
    renderer = Renderer(comp, frames_for(duration_seconds))
    return wav_bytes(renderer.render(0, renderer.total_frames))
