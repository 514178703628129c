"""`simple_llm_agent`: an OpenAI-compatible Chat Completions client (OpenAI, vLLM, Ollama, LM Studio).

Provider failures are classified for the retry policy: 429, 5xx, timeouts and connection
errors are transient; any other 4xx is permanent.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from agent_service.agents.schemas import (
    USAGE_KEY,
    AgentInput,
    AgentOutput,
    AgentUnavailable,
    PermanentAgentError,
    StreamItem,
    StreamMeta,
    TransientAgentError,
    usage_metadata,
)
from agent_service.config import Settings
from agent_service.kit import tracing


class _Usage(msgspec.Struct):
    total_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Msg(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Msg | None = None
    delta: _Msg | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    model: str | None = None
    usage: _Usage | None = None
    error: Any = None  # a stream may end in `data: {"error": {...}}` (OpenAI, vLLM, gateways)


_decode = msgspec.json.Decoder(_Completion).decode


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    # a hostile or broken provider must not steer our backoff to nan, negative or years
    return value if math.isfinite(value) and 0 <= value <= 3600 else None


def _raise_for_status(resp: httpx.Response) -> None:
    code = resp.status_code
    if code < 400:
        return
    if code == 429 or code >= 500:
        raise TransientAgentError(f"LLM provider answered {code}", retry_after=_retry_after(resp))
    raise PermanentAgentError(f"LLM provider rejected the request ({code})")


class SimpleLLMAgent:
    name = "simple_llm_agent"
    description = "Chat with an OpenAI-compatible model (LLM_BASE_URL, LLM_API_KEY, LLM_MODEL)."

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    @property
    def available(self) -> bool:
        return bool(self._settings.llm_base_url)

    @property
    def missing_settings(self) -> tuple[str, ...]:
        return () if self._settings.llm_base_url else ("LLM_BASE_URL",)

    def _request(self, data: AgentInput, *, stream: bool) -> dict[str, Any]:
        messages: list[dict[str, str]] = [{"role": "system", "content": self._settings.llm_system_prompt}]
        messages += [{"role": m.role, "content": m.content} for m in data.history]
        messages.append({"role": "user", "content": data.message})
        body: dict[str, Any] = {"model": self._settings.llm_model, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _url_headers(self) -> tuple[str, dict[str, str]]:
        if not self._settings.llm_base_url:
            raise AgentUnavailable("simple_llm_agent is not configured (set LLM_BASE_URL)")
        headers = {"Accept": "application/json"}
        if self._settings.llm_api_key:
            headers["Authorization"] = f"Bearer {self._settings.llm_api_key}"
        return self._settings.llm_base_url.rstrip("/") + "/chat/completions", headers

    def _span(self, url: str) -> Any:
        """The provider call's CLIENT span: where to and which model; never the prompt or the key."""
        parts = httpx.URL(url)
        return tracing.client_span(f"chat {self._settings.llm_model}", **{
            "http.request.method": "POST", "server.address": parts.host, "server.port": parts.port,
            "url.path": parts.path, "gen_ai.operation.name": "chat", "gen_ai.request.model": self._settings.llm_model,
        })

    async def invoke(self, data: AgentInput) -> AgentOutput:
        url, headers = self._url_headers()
        with self._span(url) as span:
            try:
                resp = await self._client.post(
                    url, json=self._request(data, stream=False), headers=headers, timeout=self._settings.llm_timeout
                )
            except httpx.TimeoutException:
                raise TransientAgentError("LLM provider timed out") from None
            except httpx.TransportError:
                raise TransientAgentError("LLM provider unreachable") from None
            span.set("http.response.status_code", resp.status_code)
        _raise_for_status(resp)
        try:
            completion = _decode(resp.content)
        except msgspec.DecodeError:
            raise TransientAgentError("LLM provider sent an unreadable response") from None
        text = ""
        if completion.choices and completion.choices[0].message:
            text = completion.choices[0].message.content or ""
        return AgentOutput(content=text, metadata=self._meta(completion))

    def _meta(self, completion: _Completion) -> dict[str, Any]:
        meta: dict[str, Any] = {"agent": self.name, "model": completion.model or self._settings.llm_model}
        if completion.usage and completion.usage.total_tokens is not None:
            meta["tokens_used"] = completion.usage.total_tokens
        if completion.usage and (completion.usage.prompt_tokens is not None
                                 or completion.usage.completion_tokens is not None):
            meta[USAGE_KEY] = usage_metadata(max(0, completion.usage.prompt_tokens or 0),
                                             max(0, completion.usage.completion_tokens or 0))
        return meta

    async def stream(self, data: AgentInput) -> AsyncIterator[StreamItem]:
        url, headers = self._url_headers()
        headers["Accept"] = "text/event-stream"
        last = _Completion()
        with self._span(url) as span:
            try:
                async with self._client.stream(
                    "POST", url, json=self._request(data, stream=True), headers=headers,
                    timeout=self._settings.llm_timeout,
                ) as resp:
                    span.set("http.response.status_code", resp.status_code)
                    if resp.status_code >= 400:
                        await resp.aread()
                        _raise_for_status(resp)
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == "[DONE]":
                            break
                        try:
                            event = _decode(payload)
                        except msgspec.DecodeError:
                            raise TransientAgentError("LLM provider sent an unreadable stream event") from None
                        if event.error is not None:
                            raise TransientAgentError("LLM provider failed mid-stream")
                        last = _Completion(model=event.model or last.model, usage=event.usage or last.usage)
                        for choice in event.choices:
                            if choice.delta and choice.delta.content:
                                yield choice.delta.content
            except httpx.TimeoutException:
                raise TransientAgentError("LLM provider timed out") from None
            except httpx.TransportError:
                raise TransientAgentError("LLM provider unreachable") from None
        yield StreamMeta(metadata=self._meta(last))
