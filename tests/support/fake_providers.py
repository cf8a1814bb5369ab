"""Local fake HTTP servers speaking the request and error shapes of the providers the generation stack
talks to (ElevenLabs music, OpenAI chat completions) and a webhook receiver that records what it gets.

Each fake is a Starlette app served by uvicorn on a free port inside the test's event loop. Behaviour is
scripted per test by pushing canned responses onto a queue; an empty queue gives the default success."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# A few bytes that look like an MP3 frame header; the fakes do not produce real audio.
FAKE_MP3 = b"\xff\xfb\x90\x64" + b"\x00" * 1020


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def serve_app(app: Starlette, host: str = "127.0.0.1") -> RunningServer:
    port = free_port()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(400):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError("fake server did not start")
    return RunningServer(f"http://{host}:{port}", port, server, task)


@dataclass
class Canned:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers, media_type=self.media_type)


def json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Canned:
    return Canned(status, orjson.dumps({"detail": detail}), headers or {})


class FakeElevenLabs:
    """POST /v1/music with xi-api-key and {"prompt", "music_length_ms"} -> audio/mpeg; GET /v1/models."""

    def __init__(self, api_key: str = "test-eleven-key") -> None:
        self.api_key = api_key
        self.music_script: deque[Canned] = deque()
        self.health_script: deque[Canned] = deque()
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/music", self._music, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    # Scripting helpers, in ElevenLabs' error shapes.
    def bad_prompt(self, suggestion: str | None = None) -> None:
        data = {"prompt_suggestion": suggestion} if suggestion else {}
        self.music_script.append(
            json_error(
                400,
                {
                    "status": "bad_prompt",
                    "message": "The prompt violates our Terms of Service.",
                    "data": data,
                },
            )
        )

    def outage(self, times: int = 1) -> None:
        for _ in range(times):
            self.music_script.append(
                json_error(503, {"status": "service_unavailable", "message": "overloaded"})
            )

    def rate_limited(self, retry_after: int = 1) -> None:
        self.music_script.append(
            json_error(
                429,
                {"status": "too_many_concurrent_requests", "message": "slow down"},
                {"retry-after": str(retry_after)},
            )
        )

    def _authorized(self, request: Request) -> Response | None:
        if request.headers.get("xi-api-key") != self.api_key:
            return json_error(401, {"status": "invalid_api_key", "message": "Invalid API key"}).response()
        return None

    async def _music(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append({"body": body, "query": dict(request.query_params)})
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self.music_script:
            return self.music_script.popleft().response()
        if not isinstance(body.get("prompt"), str) or not isinstance(body.get("music_length_ms"), int):
            return json_error(422, [{"loc": ["body", "prompt"], "msg": "field required"}]).response()
        return Response(FAKE_MP3, media_type="audio/mpeg")

    async def _models(self, request: Request) -> Response:
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self.health_script:
            return self.health_script.popleft().response()
        return Response(orjson.dumps([{"model_id": "music_v1"}]), media_type="application/json")


class FakeOpenAI:
    """POST /v1/chat/completions with a Bearer key -> {"choices": [{"message": {"content": ...}}]}."""

    def __init__(self, api_key: str = "test-openai-key", reply: str = "warm lo-fi piano, slow tempo") -> None:
        self.api_key = api_key
        self.reply = reply
        self.script: deque[Canned] = deque()
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.requests.append(body)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Canned(
                401,
                orjson.dumps({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}),
            ).response()
        if self.script:
            return self.script.popleft().response()
        return Response(
            orjson.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.reply},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ),
            media_type="application/json",
        )


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """Records deliveries; answers ``fail_first`` requests with 500 before accepting."""

    def __init__(self, fail_first: int = 0, reply: bytes = b"ok") -> None:
        self.fail_first = fail_first
        self.reply = reply
        self.received: list[Received] = []
        self.arrived = asyncio.Event()
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        self.received.append(
            Received({k.lower(): v for k, v in request.headers.items()}, await request.body())
        )
        self.arrived.set()
        if len(self.received) <= self.fail_first:
            return Response(b"try again", status_code=500)
        return Response(self.reply, media_type="text/plain")

    def event_ids(self) -> list[str]:
        return [r.headers["x-event-id"] for r in self.received]

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.body) for r in self.received]
