"""Prompt analysis, WAV synthesis, provider-safe rewrites, local refinement and provider API shapes."""

from __future__ import annotations

import io
import wave

import orjson
import pytest

from resource_server.generation.errors import ErrorCategory
from resource_server.generation.providers import elevenlabs_api, openai_api
from resource_server.generation.providers.composition import MINOR, analyze
from resource_server.generation.providers.refine_local import refine_locally
from resource_server.generation.providers.safe_prompt import FALLBACK_PROMPT, safe_rewrite
from resource_server.generation.providers.synth import (
    SAMPLE_RATE,
    Renderer,
    frames_for,
    render_wav,
    wav_bytes,
)
from resource_server.generation.tools.audio_checks import inspect_audio


def test_mood_tempo_and_key_follow_the_words():
    calm = analyze("calm peaceful ambient piano for sleep")
    assert calm.mood == "calm" and 60 <= calm.tempo_bpm <= 80
    fast = analyze("energetic upbeat dance workout")
    assert fast.mood == "energetic" and 120 <= fast.tempo_bpm <= 150
    sad = analyze("a sad and dark rainy evening")
    assert sad.minor and sad.scale == MINOR and sad.key_name.endswith("minor")
    assert not analyze("happy bright sunny morning").minor
    assert analyze("techno at 174 bpm").tempo_bpm == 174
    # Deterministic, case- and whitespace-insensitive; different prompts usually differ.
    assert analyze("Calm  Piano") == analyze("calm piano")
    variety = {analyze(f"song number {i}").describe()["key"] for i in range(30)}
    assert len(variety) > 5


@pytest.mark.parametrize("duration", [1.0, 2.5, 3.3333])
def test_wav_is_valid_16bit_mono_44k_with_the_requested_duration(duration):
    data = render_wav(analyze("calm piano"), duration)
    with wave.open(io.BytesIO(data), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (
            1,
            2,
            44100,
            "NONE",
        )
        assert abs(w.getnframes() - duration * SAMPLE_RATE) <= 1
        frames = w.readframes(w.getnframes())
    samples = memoryview(frames).cast("h")
    assert max(abs(s) for s in samples) > 1000  # not silence
    assert abs(samples[0]) < 50 and abs(samples[-1]) < 50  # faded in and out: no click


def test_same_inputs_give_identical_bytes_and_block_size_does_not_matter():
    comp = analyze("energetic happy synth")
    first = render_wav(comp, 2.0)
    assert render_wav(analyze("energetic happy synth"), 2.0) == first
    assert render_wav(analyze("dark ambient drone"), 2.0) != first
    renderer = Renderer(comp, frames_for(2.0))
    odd_blocks = b"".join(renderer.render(s, s + 7919) for s in range(0, renderer.total_frames, 7919))
    assert wav_bytes(odd_blocks) == first


def test_safe_rewrite_strips_artists_and_lyrics_and_says_instrumental():
    cases = {
        "an upbeat pop song like Taylor Swift with lyrics about love": "an upbeat pop song, instrumental",
        "dark techno in the style of daft punk, heavy bass": "dark techno, heavy bass, instrumental",
        'Sing "Yesterday" by The Beatles, acoustic guitar': "acoustic guitar, instrumental",
        "Beatles-style rock ballad, slow": "rock ballad, slow, instrumental",
        "folk tune with female vocals and fiddle": "folk tune, instrumental",
        "calm piano like rain on a window": "calm piano like rain on a window, instrumental",
        "instrumental jazz trio": "instrumental jazz trio",
        "lyrics only": FALLBACK_PROMPT,
    }
    for prompt, expected in cases.items():
        rewritten = safe_rewrite(prompt)
        assert rewritten == expected, prompt
        assert safe_rewrite(rewritten) == rewritten  # idempotent


def test_local_refiner_is_deterministic_and_makes_intent_explicit():
    refined = refine_locally("  calm\tpiano \x07at night. ")
    assert refined.startswith("calm piano at night, ")
    assert "bpm" in refined and ("major" in refined or "minor" in refined)
    assert refine_locally("calm piano at night") == refined
    # The synthesizer reads the refined prompt the same way it read the original.
    assert analyze(refined).tempo_bpm == analyze("calm piano at night").tempo_bpm
    assert refine_locally("techno 128 bpm in A minor") == "techno 128 bpm in A minor"


def test_elevenlabs_error_shapes_are_classified():
    bad = orjson.dumps(
        {"detail": {"status": "bad_prompt", "message": "nope", "data": {"prompt_suggestion": "calm piano"}}}
    )
    e = elevenlabs_api.classify_error(400, bad, {})
    assert (e.category, e.code, e.suggestion) == (ErrorCategory.TERMS, "bad_prompt", "calm piano")
    no_hint = orjson.dumps({"detail": {"status": "bad_prompt", "message": "nope"}})
    assert elevenlabs_api.classify_error(400, no_hint, {}).suggestion is None
    limited = elevenlabs_api.classify_error(429, b'{"detail": "slow down"}', {"retry-after": "7"})
    assert limited.category is ErrorCategory.TRANSIENT and limited.retry_after == 7
    assert elevenlabs_api.classify_error(503, b"<html>down</html>", {}).category is ErrorCategory.TRANSIENT
    unauthorized = orjson.dumps({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})
    assert elevenlabs_api.classify_error(401, unauthorized, {}).category is ErrorCategory.PERMANENT
    invalid = orjson.dumps({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]})
    assert elevenlabs_api.classify_error(422, invalid, {}).category is ErrorCategory.PERMANENT
    assert elevenlabs_api.music_body("x", 12.3456) == {
        "prompt": "x",
        "music_length_ms": 12346,
        "model_id": "music_v1",
    }
    assert not elevenlabs_api.supports_duration(5) and elevenlabs_api.supports_duration(10)


def test_openai_shapes():
    body = openai_api.completion_body("m", "calm piano")
    assert body["model"] == "m" and body["messages"][-1] == {"role": "user", "content": "calm piano"}
    assert (
        openai_api.completion_text({"choices": [{"message": {"content": ' "soft piano" '}}]}) == "soft piano"
    )
    assert openai_api.completion_text({"choices": []}) is None
    assert openai_api.error_message({"error": {"message": "bad key"}}) == "bad key"


def test_audio_checks_cap_size_and_read_wav_duration():
    data = render_wav(analyze("x"), 1.5)
    info = inspect_audio(data, "audio/wav", max_bytes=10**7)
    assert info.duration_seconds == pytest.approx(1.5, abs=1 / SAMPLE_RATE) and info.size == len(data)
    assert inspect_audio(b"\xff\xfb", "audio/mpeg", max_bytes=10).duration_seconds is None
    with pytest.raises(Exception) as too_big:
        inspect_audio(data, "audio/wav", max_bytes=1000)
    assert getattr(too_big.value, "code", None) == "output_too_large"
    with pytest.raises(Exception) as garbage:
        inspect_audio(b"RIFFnope", "audio/wav", max_bytes=1000)
    assert getattr(garbage.value, "category", None) is ErrorCategory.TRANSIENT
