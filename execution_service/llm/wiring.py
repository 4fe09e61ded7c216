"""How the composition root gives the ``llm`` agent its model client.

One ``AsyncOpenAI`` client per process (its connection pool is shared by
every run), opened when the endpoint is configured and closed on shutdown
by the root; without ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` the agent stays
listed, and starting it is refused with the settings to set.
"""

from __future__ import annotations

import functools

from openai import AsyncOpenAI

from execution_service.catalog import AgentCatalog, CatalogError
from execution_service.llm.agent import LlmAgent
from execution_service.llm.settings import LlmSettings
from runwire_common.errors import NotFound


def open_client(settings: LlmSettings) -> AsyncOpenAI | None:
    """The model client, or ``None`` while the endpoint is not configured. The caller closes it."""
    if settings.missing():
        return None
    return AsyncOpenAI(
        base_url=settings.base_url.strip(),
        api_key=settings.api_key.get_secret_value(),
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def not_configured_message(settings: LlmSettings) -> str:
    return (
        f"the llm agent is not configured on this server: set {' and '.join(settings.missing())} "
        "(and RUNWIRE_LLM_MODEL) in the execution service's environment"
    )


def bind_llm(catalog: AgentCatalog, settings: LlmSettings, client: AsyncOpenAI | None) -> AgentCatalog:
    """``catalog`` with its ``llm`` agent built on ``client``, or marked unavailable without one.

    Tool names in ``RUNWIRE_LLM_TOOLS`` / ``RUNWIRE_LLM_APPROVAL_TOOLS`` the
    agent does not declare fail here, at start-up.
    """
    try:
        spec = catalog.agent(LlmAgent.name)
    except NotFound:
        return catalog
    if not issubclass(spec.agent_class, LlmAgent):
        return catalog  # a plugin replaced it: it is not ours to wire
    unknown = sorted({*settings.tools, *settings.approval_tools} - set(spec.tools))
    if unknown:
        raise CatalogError(
            f"RUNWIRE_LLM_TOOLS / RUNWIRE_LLM_APPROVAL_TOOLS name tools the llm agent does not have: "
            f"{', '.join(unknown)} (it has {', '.join(spec.tools)})"
        )
    if client is None:
        return catalog.configured(LlmAgent.name, unavailable_reason=not_configured_message(settings))
    factory = functools.partial(spec.agent_class, client, settings, catalog.tools_of(spec))
    return catalog.configured(LlmAgent.name, factory=factory)
