"""`rlkit serve`: an OpenAI-compatible HTTP API and a web chat page for a saved model (FastAPI + uvicorn).

Routes: POST /v1/chat/completions (rlkit.cli.openai_api says what is accepted), GET /v1/models,
GET /health, GET / (chat.html, one static file shipped in the package). Every request becomes an
rlkit.lib.generation.engine Request, so concurrent requests share one decode batch and n > 1 samples share
their prompt's prefill. A sample with seed s (row g of n: seed s + g) gets the tokens rlkit's sampler
gives for that prompt and seed. Streams are server-sent events ending in `data: [DONE]`.

Safety: 127.0.0.1 unless --host says otherwise (a warning line); --api-key: every /v1 route needs
`Authorization: Bearer KEY` (401); Limits: body size (413), max_tokens, messages and n (400), requests in
flight (429), seconds per request (504); unknown routes 404, wrong methods 405, all with OpenAI's error
body; a client that goes away mid-stream has its rows dropped at the next step.
--tool NAME: calls run server-side in the engine, the reply holds them; a request's `tools` field gets 400.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import signal
import threading
import time
import uuid
from importlib import resources

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from rlkit.cli.openai_api import ApiError, Chat, Limits, parse_chat, read_json_body
from rlkit.cli import hosts
from rlkit.lib.generation.engine import Engine, Request
from rlkit.core.errors import RlkitError
from rlkit.cli.inference import TextStream


def make_app(engine: Engine, tokenizer, model_id: str, limits: Limits, api_key: str | None = None, tools=None):
    app = FastAPI(title="rlkit serve", docs_url=None, redoc_url=None, openapi_url=None)
    runs: set[_Run] = set()  # requests whose engine rows have not all ended
    waker = _Waker()

    def in_flight() -> int:
        runs.difference_update([r for r in runs if r.req.done])
        return len(runs)
    stop_ids = set(tokenizer.stop_ids)

    _guard(app, api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok" if engine.error is None else "error", "model": model_id,
                "requests": in_flight(), "error": engine.error}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "rlkit"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (resources.files("rlkit.cli") / "chat.html").read_text()

    @app.post("/v1/chat/completions")
    async def completions(request: HttpRequest):
        try:
            chat = parse_chat(await read_json_body(request, limits.max_body_bytes), limits)
            if in_flight() >= limits.max_concurrent:
                raise ApiError(429, f"the server is busy ({limits.max_concurrent} requests in flight); retry later",
                               code="rate_limit_exceeded", kind="rate_limit_error")
            req, prompt_len = _submit(engine, tokenizer, chat, limits, tools)
        except ApiError as e:
            return _error(e)
        run = _Run(req, chat, tokenizer, stop_ids, prompt_len, model_id, limits.timeout, waker)
        runs.add(run)
        if chat.stream:
            return StreamingResponse(run.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            await run.wait()
        except ApiError as e:
            return _error(e)
        finally:
            req.cancel()
        return JSONResponse(run.response())  # as it is: no jsonable_encoder pass over a plain dict

    return app


def _error(e: ApiError):
    return JSONResponse(e.body(), status_code=e.status)


def _guard(app, api_key: str | None) -> None:
    """Errors in OpenAI's shape for routing failures and crashes (never a traceback), and the API key check."""
    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404, 405 from routing, in OpenAI's shape
        return _error(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                               code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def crash(request, exc):  # never a traceback to the client
        return _error(ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error"))

    async def check_key(request, call_next):
        if request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                why = "missing" if not given else "incorrect"
                return _error(ApiError(401, f"{why} API key: send the header 'Authorization: Bearer <key>' with "
                                            "the key given to rlkit serve --api-key", code="invalid_api_key"))
        return await call_next(request)
    if api_key is not None:  # a middleware costs every request some time, so only when there is a key to check
        app.middleware("http")(check_key)


def _submit(engine, tokenizer, chat: Chat, limits: Limits, tools=None):
    try:
        prompt = tokenizer.render_for_completion(chat.messages)
    except RlkitError as e:
        raise ApiError(400, str(e), "messages") from None
    room = engine.max_len - len(prompt)
    if room < 1 or (chat.max_tokens or 1) > room:
        raise ApiError(400, f"the prompt takes {len(prompt)} of the model's {engine.max_len} positions, which leaves "
                            f"{max(room, 0)} for the reply; shorten the conversation or lower max_tokens",
                       "messages", "context_length_exceeded")
    max_new = chat.max_tokens or min(limits.max_tokens, room)
    seeds = None if chat.seed is None else [chat.seed + g for g in range(chat.n)]
    req = Request(prompt, chat.n, max_new, chat.temperature, chat.top_k, seeds, tools=tools)  # --tool: server-side
    try:
        engine.submit(req)
    except RlkitError as e:
        raise ApiError(503 if engine.error else 400, str(e), kind="server_error" if engine.error else
                       "invalid_request_error") from None
    return req, len(prompt)


class _Waker:
    """Sets asyncio Events from the engine's thread, one event-loop wake-up for all those set meanwhile: a
    wake-up is a write to the loop's pipe, and the engine thread waits for the GIL after each one."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, known once a request runs in it
        self.lock = threading.Lock()
        self.events: list[asyncio.Event] = []

    def wake(self, event: asyncio.Event) -> None:
        with self.lock:
            self.events.append(event)
            if len(self.events) > 1:
                return  # a wake-up is on its way and will set this one too
        self.loop.call_soon_threadsafe(self._set_all)

    def _set_all(self) -> None:
        with self.lock:
            events, self.events = self.events, []
        for event in events:
            event.set()


class _Run:
    """One request in flight: its engine Request, each sample's text so far, and the response shapes."""

    def __init__(self, req, chat, tokenizer, stop_ids, prompt_len, model_id, timeout, waker):
        self.req, self.chat, self.stop_ids, self.prompt_len, self.model_id = req, chat, stop_ids, prompt_len, model_id
        self.texts = [TextStream(tokenizer, chat.stop) for _ in range(chat.n)]
        self.seen = [0] * chat.n  # tokens of each sample already turned into text
        self.reasons: list[str | None] = [None] * chat.n
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.changed, waker.loop = asyncio.Event(), asyncio.get_running_loop()
        wake = lambda: waker.wake(self.changed)  # noqa: E731
        lazy = not chat.stream and not chat.stop  # nothing to do before the end: wake up once
        req.notify = (lambda: req.done and wake()) if lazy else wake
        self.changed.set()

    async def updates(self):
        """Yield [(sample, new text, finish reason or None)] each time the engine moved this request on."""
        while not all(self.reasons):
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, self.deadline - time.monotonic()))
            except (asyncio.TimeoutError, TimeoutError):
                raise ApiError(504, f"the request took longer than {self.timeout:g} s (rlkit serve --timeout)",
                               code="timeout", kind="server_error") from None
            self.changed.clear()
            out = []
            for g, text in enumerate(self.texts):
                if self.reasons[g]:
                    continue
                new_ids = self.req.tokens[g][self.seen[g]:]
                self.seen[g] += len(new_ids)
                new = text.feed([t for t in new_ids if t not in self.stop_ids])
                finish = self.req.finish[g]
                if text.stopped:  # a stop string: this sample is done, whatever the engine is at
                    self.req.cancel(g)
                    finish = "stop"
                elif finish == "error":
                    raise ApiError(500, "the model failed; the server's log says why", kind="server_error")
                elif finish is not None:
                    new += text.finish()
                    finish = "stop" if finish == "stop" else "length"
                self.reasons[g] = finish
                if new or finish:
                    out.append((g, new, finish))
            if out:
                yield out

    async def wait(self):
        async for _ in self.updates():
            pass

    def usage(self) -> dict:
        done = sum(self.seen)
        return {"prompt_tokens": self.prompt_len, "completion_tokens": done, "total_tokens": self.prompt_len + done}

    def response(self) -> dict:
        choices = [{"index": g, "message": {"role": "assistant", "content": t.text}, "finish_reason": self.reasons[g],
                    "logprobs": None} for g, t in enumerate(self.texts)]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": choices, "usage": self.usage()}

    def chunk(self, choices, usage=None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def events(self):
        try:
            yield self.chunk([{"index": g, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                              for g in range(self.chat.n)])
            async for update in self.updates():
                yield self.chunk([{"index": g, "delta": {"content": new} if new else {}, "finish_reason": finish}
                                  for g, new, finish in update])
            if self.chat.include_usage:
                yield self.chunk([], self.usage())
            yield "data: [DONE]\n\n"
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (the generator is closed): free the rows
            self.req.cancel()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(path, host: str, port: int, api_key: str | None, limits: Limits, device: str = "cpu",
          max_rows: int = 64, dtype=None, tools=(), plugins=()) -> None:
    """Load the checkpoint, start the engine, listen on (host, port) until Ctrl-C; prints one line a state."""
    import typer
    import uvicorn

    from rlkit.cli import inference

    if api_key is not None and not api_key.strip():
        raise RlkitError("--api-key is empty: give a key that clients will send, or leave --api-key (and "
                         "RLKIT_API_KEY) out to serve without one")
    sock = hosts.bind(host, port)  # resolve and bind before loading anything: a busy port costs nothing and aborts nothing
    if not hosts.is_loopback(host):
        typer.echo(f"warning: --host {host} exposes the model beyond this machine: anyone who can reach this address "
             f"can use it{'' if api_key else ' (no --api-key is set)'}", err=True)
    try:
        model, tokenizer, handle, box = inference.load_with_tools(path, device, tools, plugins)
    except BaseException:
        sock.close()
        raise
    model_id = f"rlkit/{handle.path.parent.parent.name}/{handle.path.parent.name}"
    engine = Engine(model, tokenizer.stop_ids, dtype=dtype, max_rows=max_rows)
    app = make_app(engine, tokenizer, model_id, limits, api_key, box)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False)
    server = uvicorn.Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    typer.echo(f"rlkit serve: {model_id} ({handle.path}) on http://{shown}:{bound_port} (API: /v1, chat page: /); "
         "Ctrl-C stops")
    signal.signal(signal.SIGTERM, _interrupt)  # so that SIGTERM ends like Ctrl-C (uvicorn raises it again)
    try:
        server.run(sockets=[sock])  # uvicorn shuts down on SIGINT / SIGTERM, then raises the signal again
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        sock.close()
    typer.echo("rlkit serve: stopped")
