"""The ``llm`` agent: any OpenAI-compatible chat-completions endpoint, through the ``openai`` SDK."""

from __future__ import annotations

from execution_service.llm.agent import LlmAgent
from execution_service.llm.settings import LlmSettings

__all__ = ("LlmAgent", "LlmSettings")
