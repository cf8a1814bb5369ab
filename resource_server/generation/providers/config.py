"""Provider configuration from the environment, and building the default chain and refiner from it.

ELEVENLABS_API_KEY turns the ElevenLabs provider on (ahead of the local synthesizer, which is always
last). GENERATION_REFINER_BASE_URL plus GENERATION_REFINER_API_KEY turn LLM prompt refinement on."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import elevenlabs_api
from .base import MusicProvider, PromptRefiner
from .elevenlabs import ElevenLabsMusicProvider
from .local_audio import LocalAudioProvider
from .refine_local import LocalRefiner
from .refine_openai import OpenAIRefiner


class ProviderSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    elevenlabs_api_key: SecretStr | None = Field(None, alias="ELEVENLABS_API_KEY")
    elevenlabs_base_url: str = Field(elevenlabs_api.DEFAULT_BASE_URL, alias="ELEVENLABS_BASE_URL")
    elevenlabs_model_id: str = Field(elevenlabs_api.DEFAULT_MODEL, alias="ELEVENLABS_MUSIC_MODEL")
    elevenlabs_timeout_seconds: float = Field(300.0, alias="ELEVENLABS_TIMEOUT_SECONDS")
    refiner_base_url: str | None = Field(None, alias="GENERATION_REFINER_BASE_URL")
    refiner_api_key: SecretStr | None = Field(None, alias="GENERATION_REFINER_API_KEY")
    refiner_model: str = Field("gpt-4o-mini", alias="GENERATION_REFINER_MODEL")


def build_providers(settings: ProviderSettings) -> list[MusicProvider]:
    providers: list[MusicProvider] = []
    if settings.elevenlabs_api_key is not None and settings.elevenlabs_api_key.get_secret_value():
        providers.append(
            ElevenLabsMusicProvider(
                api_key=settings.elevenlabs_api_key.get_secret_value(),
                base_url=settings.elevenlabs_base_url,
                model_id=settings.elevenlabs_model_id,
                timeout_seconds=settings.elevenlabs_timeout_seconds,
            )
        )
    providers.append(LocalAudioProvider())
    return providers


def build_refiner(settings: ProviderSettings) -> PromptRefiner:
    key = settings.refiner_api_key.get_secret_value() if settings.refiner_api_key is not None else ""
    if settings.refiner_base_url and key:
        return OpenAIRefiner(api_key=key, base_url=settings.refiner_base_url, model=settings.refiner_model)
    return LocalRefiner()
