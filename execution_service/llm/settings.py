"""Settings of the ``llm`` agent: the endpoint (the SDK's own variables) and Runwire's limits.

``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` keep the names the ``openai`` SDK
and every compatible server's documentation use; everything else is
``RUNWIRE_LLM_*``. Lists are comma-separated (``RUNWIRE_LLM_TOOLS=calculator,clock``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BASE_URL_VARIABLE = "OPENAI_BASE_URL"
API_KEY_VARIABLE = "OPENAI_API_KEY"
MODEL_VARIABLE = "RUNWIRE_LLM_MODEL"
ENV_PREFIX = "RUNWIRE_LLM_"

NameList = Annotated[tuple[str, ...], NoDecode]


class LlmSettings(BaseSettings):
    """How the ``llm`` agent reaches its model, and the bounds of one run.

    ``tools`` empty means every tool the agent declares; ``approval_tools``
    are asked to the run's owner before each call.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True, extra="ignore")

    base_url: str = Field(default="", validation_alias=AliasChoices("base_url", BASE_URL_VARIABLE))
    api_key: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("api_key", API_KEY_VARIABLE)
    )
    model: str = Field(default="", description="model used when the run's input names none")
    timeout_s: float = Field(default=60.0, gt=0, description="timeout of one request to the endpoint")
    max_steps: int = Field(default=8, ge=1, description="model turns per run at most")
    max_retries: int = Field(default=2, ge=0, description="SDK retries of a failed request (429, 5xx)")
    history_max_chars: int = Field(
        default=24_000, ge=0, description="characters of earlier turns sent (oldest turns dropped first)"
    )
    tools: NameList = Field(default=(), description="tools offered to the model (empty: all declared)")
    approval_tools: NameList = Field(default=(), description="tools that need the owner's approval")

    @field_validator("tools", "approval_tools", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def missing(self) -> tuple[str, ...]:
        """The variables that must still be set before the agent can run."""
        unset = []
        if not self.base_url.strip():
            unset.append(BASE_URL_VARIABLE)
        if not self.api_key.get_secret_value():
            unset.append(API_KEY_VARIABLE)
        return tuple(unset)
