"""Runwire's built-in agents and tools."""

from __future__ import annotations

from execution_service.builtins.assistant import AssistantAgent
from execution_service.builtins.basic_tools import BUILTIN_TOOLS
from execution_service.builtins.scripted import ScriptedAgent
from execution_service.llm.agent import LlmAgent
from execution_service.sdk import Agent

BUILTIN_AGENTS: tuple[type[Agent], ...] = (AssistantAgent, LlmAgent, ScriptedAgent)

__all__ = ("BUILTIN_AGENTS", "BUILTIN_TOOLS", "AssistantAgent", "ScriptedAgent")
