"""The OpenAI chat-completions request, checked field by field, and the OpenAI-style error body.

parse_chat(body, limits) turns the JSON body of POST /v1/chat/completions into a Chat, or raises
ApiError(status, message, param) whose body() is OpenAI's {"error": {"message", "type", "param",
"code"}}. Supported: messages (system first, then user / assistant; content a string or a list of
{"type": "text"} parts), max_tokens / max_completion_tokens, temperature, top_p (1 only: the sampler
has no nucleus sampling), top_k (an extension, as in vLLM), n, seed, stop, stream, stream_options.
Parameters that would change the answer and that rlkit does not implement (tools, logprobs, penalties,
...) are refused with 400 rather than ignored; fields that do not (user, metadata, ...) are ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
UNSUPPORTED = {  # field -> the value that means "not used", which is accepted
    "tools": None, "tool_choice": None, "functions": None, "function_call": None, "logprobs": False,
    "top_logprobs": None, "logit_bias": None, "response_format": None, "presence_penalty": 0,
    "frequency_penalty": 0, "audio": None, "modalities": None, "prediction": None,
}


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000
    max_tokens: int = 1024  # most completion tokens a request may ask for
    max_messages: int = 256
    max_n: int = 16
    max_concurrent: int = 64  # requests in flight; more get 429
    timeout: float = 120.0  # seconds a request may take


@dataclass
class Chat:
    messages: list[dict]
    max_tokens: int | None = None  # None: as many as the limits and the model's length allow
    temperature: float = 1.0
    top_k: int | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


MAX_JSON_DEPTH = 32  # a chat request nests 5 deep; a deeper body is refused before anything walks it


def decode_json(body: bytes):
    """The request body as JSON data, or ApiError 400: not JSON, or nested deeper than MAX_JSON_DEPTH (a body
    nested thousands deep would otherwise exhaust the parser's stack: a 500)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:
        data = None
    if data is None or _too_deep(data, MAX_JSON_DEPTH):
        raise ApiError(400, f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} deep; a chat "
                            "request needs at most 5", code="invalid_json")
    return data


def _too_deep(data, limit: int) -> bool:
    """Whether JSON data nests lists or dicts more than `limit` deep; iterative, so any depth is safe."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def parse_chat(body, limits: Limits) -> Chat:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name, unused in UNSUPPORTED.items():
        if body.get(name, unused) not in (unused, None, [], {}):
            raise ApiError(400, f"'{name}' is not supported by this server (rlkit serve); leave it out", name,
                           "unsupported_parameter")
    top_p = _number(body, "top_p", 1.0, 0, 1)
    if top_p != 1:
        raise ApiError(400, f"top_p={top_p} is not supported (rlkit's sampler has no nucleus sampling); leave "
                            "top_p at 1 and use temperature or top_k", "top_p", "unsupported_parameter")
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    top_k = _integer(body, "top_k", None, -1, 2**31 - 1)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    return Chat(
        messages=_messages(body.get("messages"), limits),
        max_tokens=_integer(body, key, None, 1, limits.max_tokens),
        temperature=_number(body, "temperature", 1.0, 0, 2),
        top_k=None if top_k in (None, -1, 0) else top_k,
        n=_integer(body, "n", 1, 1, limits.max_n),
        seed=_integer(body, "seed", None, -(2**63), 2**64 - 1),
        stop=_stop(body.get("stop")),
        stream=_boolean(body, "stream"),
        include_usage=_boolean(stream_options, "include_usage", "stream_options.include_usage"),
    )


def _messages(messages, limits):
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"{len(messages)} messages; this server takes at most {limits.max_messages}", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'", where)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role is {role!r}; valid roles: {', '.join(ROLES)}", f"{where}.role")
        if role == "system" and i > 0:
            raise ApiError(400, f"{where}: a system message may only come first", f"{where}.role")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                    "supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant" or all(m["role"] == "system" for m in out):
        raise ApiError(400, "the last message must be the user's (the model answers it)", "messages")
    return out


def _integer(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {value!r:.40}", name)
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"'{name}' is {value}; valid: {low} .. {high if high is not None else 'any'}", name)
    return value


def _number(body, name, default, low, high):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{name}' must be a number, got {value!r:.40}", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' is {value}; valid: {low} .. {high}", name)
    return float(value)


def _boolean(body, name, param=None):
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"'{param or name}' must be true or false, got {value!r:.40}", param or name)
    return value


def _stop(stop):
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return stops


async def read_json_body(request, max_bytes: int):
    """The request's JSON body, read in chunks and refused (413) past `max_bytes` before it is all read."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body is larger than {max_bytes} bytes (rlkit serve --max-body-bytes)",
                       code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return decode_json(bytes(body))
