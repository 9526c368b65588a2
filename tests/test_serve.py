"""`rlkit serve` as a user meets it: a real server process on a free loopback port, the real `openai` client.

Replies equal rlkit's sampler (and `rlkit chat -p`) token for token; n samples, usage counts and streams are
right; 16 concurrent requests get what they get one at a time; bad requests get OpenAI-style errors and the
server keeps serving; it listens on 127.0.0.1 only by default and Ctrl-C stops it cleanly.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from openai import APIStatusError, OpenAI

from rlkit.cli.inference import load
from rlkit.lib.generation.sampling import generate

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "What is 2 + 5?"}]


class Server:
    def __init__(self, run, log, *args):
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rlkit", "serve", str(run), "--port", "0", *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + 120
        while not (found := re.search(r"on http://([\d.]+):(\d+) ", log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        self.host, self.port = found.group(1), int(found.group(2))
        self.url = f"http://127.0.0.1:{self.port}"
        while True:  # the line comes just before uvicorn accepts connections
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < end, log.read_text()
                time.sleep(0.05)

    def stop(self, sig=signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    s = Server(tiny_run, tmp_path_factory.mktemp("serve") / "log.txt", "--api-key", KEY, "--max-tokens", "600",
               "--max-body-bytes", "20000", "--max-concurrent", "32")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(tiny_run):
    model, tokenizer, _ = load(tiny_run)
    return model, tokenizer


def sampled(model, messages, n, max_new, temperature, seed, top_k=None):
    """(texts, token counts, finish reasons) rlkit's sampler gives: sample g has seed + g; stop tokens are
    counted, not shown."""
    model, tok = model
    out = generate(model, [tok.render_for_completion(messages)], n, max_new, temperature, top_k, tok.stop_ids,
                   seeds=[seed + g for g in range(n)]).completions
    return ([tok.decode([t for t in c if t not in tok.stop_ids]) for c in out], [len(c) for c in out],
            ["stop" if c and c[-1] in tok.stop_ids else "length" for c in out])


def test_greedy_reply_equals_the_sampler_and_rlkit_chat(client, model, cli, tiny_run):
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=0, seed=1, max_tokens=40)
    texts, counts, reasons = sampled(model, QUESTION, 1, 40, 0.0, 1)
    chat = cli("chat", tiny_run, "-p", QUESTION[0]["content"], "--temperature", "0", "--seed", "1",
               "--max-tokens", "40")
    assert len(texts[0]) > 10 and r.choices[0].message.content == texts[0] == chat.stdout[:-1]
    assert r.choices[0].finish_reason == reasons[0]
    prompt = model[1].render_for_completion(QUESTION)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), counts[0])
    assert r.usage.total_tokens == len(prompt) + counts[0]


def test_n_samples_seeds_and_usage(client, model):
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=1.0, seed=11, n=4, max_tokens=30)
    texts, counts, reasons = sampled(model, QUESTION, 4, 30, 1.0, 11)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.message.content for c in r.choices] == texts and len(set(texts)) > 1
    assert [c.finish_reason for c in r.choices] == reasons
    assert r.usage.completion_tokens == sum(counts)
    assert r.usage.prompt_tokens == len(model[1].render_for_completion(QUESTION))  # the prompt counts once


def test_stream_gives_the_same_text_in_pieces_then_done(client, model, server):
    kwargs = dict(model="any", messages=QUESTION, temperature=0.7, top_p=1, seed=5, max_tokens=50)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    raw = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={**kwargs, "stream": True}).text
    assert raw.endswith("data: [DONE]\n\n") and all(e.startswith("data: ") for e in raw.split("\n\n") if e)


def test_stop_strings_end_the_text_before_them(client, model):
    texts = sampled(model, QUESTION, 1, 60, 1.0, 21)[0]
    cut = texts[0][len(texts[0]) // 2:][:2]  # a piece from the middle of the reply
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=1.0, seed=21, max_tokens=60,
                                       stop=[cut])
    assert r.choices[0].message.content == texts[0][:texts[0].index(cut)]
    assert r.choices[0].finish_reason == "stop"


def test_16_concurrent_requests_equal_the_same_requests_one_at_a_time(client, model):
    asks = [dict(messages=[{"role": "user", "content": f"What is {i} + {2 * i}?"}], seed=100 + i,
                 max_tokens=20 + 3 * i, n=1 + i % 2, temperature=1.0) for i in range(16)]

    def ask(kwargs):
        return [c.message.content for c in client.chat.completions.create(model="any", **kwargs).choices]

    alone = [ask(a) for a in asks]
    together = [None] * 16
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(asks[i]))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone
    assert alone[3] == sampled(model, asks[3]["messages"], 2, 29, 1.0, 103)[0]  # and what the sampler gives


def post(server, body, key=KEY, raw=None, headers=None):
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = raw if raw is not None else json.dumps(body)
    return httpx.post(f"{server.url}/v1/chat/completions", content=data, headers=h, timeout=30)


OK = {"messages": QUESTION, "max_tokens": 4}
BAD = [  # (what, request body or raw bytes, key, status, the error's param)
    ("invalid JSON", b'{"messages": [', KEY, 400, None),
    ("not an object", [1, 2], KEY, 400, None),
    ("messages not a list", {"messages": "hi"}, KEY, 400, "messages"),
    ("empty messages", {"messages": []}, KEY, 400, "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, KEY, 400, "messages[0].role"),
    ("content of a wrong type", {"messages": [{"role": "user", "content": 5}]}, KEY, 400, "messages[0].content"),
    ("negative max_tokens", {**OK, "max_tokens": -3}, KEY, 400, "max_tokens"),
    ("huge max_tokens", {**OK, "max_tokens": 10**9}, KEY, 400, "max_tokens"),
    ("max_tokens as a string", {**OK, "max_tokens": "10"}, KEY, 400, "max_tokens"),
    ("temperature out of range", {**OK, "temperature": -1}, KEY, 400, "temperature"),
    ("n of zero", {**OK, "n": 0}, KEY, 400, "n"),
    ("unsupported top_p", {**OK, "top_p": 0.5}, KEY, 400, "top_p"),
    ("unsupported tools", {**OK, "tools": [{"type": "function"}]}, KEY, 400, "tools"),
    ("too many stop strings", {**OK, "stop": ["a", "b", "c", "d", "e"]}, KEY, 400, "stop"),
    ("a prompt longer than the model", {"messages": [{"role": "user", "content": "1 " * 700}]}, KEY, 400, "messages"),
    ("oversized body", {"messages": [{"role": "user", "content": "x" * 30000}]}, KEY, 413, None),
    ("missing API key", OK, None, 401, None),
    ("incorrect API key", OK, "wrong", 401, None),
]


@pytest.mark.parametrize("what, body, key, status, param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, what, body, key, status, param):
    r = post(server, body, key, raw=body if isinstance(body, bytes) else None)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in r.text
    assert error["type"] and error["param"] == param
    assert post(server, OK).status_code == 200


def test_routes_methods_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == ["rlkit/tiny/sft"]
    assert httpx.get(f"{server.url}/v1/models").status_code == 401  # the key guards every /v1 route
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # health and the page need no key
    assert "<textarea" in httpx.get(f"{server.url}/").text
    keyed = {"Authorization": f"Bearer {KEY}"}
    for r, status in [(httpx.get(f"{server.url}/nope"), 404),
                      (httpx.get(f"{server.url}/v1/chat/completions", headers=keyed), 405)]:
        assert r.status_code == status and r.json()["error"]["message"]
    with pytest.raises(APIStatusError) as e:
        client.chat.completions.create(model="any", messages=QUESTION, logprobs=True)
    assert e.value.status_code == 400 and "logprobs" in e.value.message


def test_a_client_that_leaves_mid_stream_frees_its_rows(server):
    body = {"messages": QUESTION, "max_tokens": 600, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    end = time.monotonic() + 20
    while httpx.get(f"{server.url}/health").json()["requests"]:  # the request ends without reading the rest
        assert time.monotonic() < end
        time.sleep(0.05)
    assert post(server, OK).status_code == 200


def listening_addresses(port):
    """The local addresses of the LISTEN sockets on `port`, from /proc/net/tcp (IPv4) and tcp6."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(name).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


def test_default_host_is_loopback_limits_apply_and_ctrl_c_stops(tiny_run, tmp_path, model):
    assert sampled(model, QUESTION, 1, 1000, 0.0, 0)[2] == ["length"]  # greedy runs all 1000 tokens (~0.7 s)
    s = Server(tiny_run, tmp_path / "log.txt", "--max-concurrent", "1", "--timeout", "0.25")
    try:
        assert s.host == "127.0.0.1" and listening_addresses(s.port) == ["127.0.0.1"]
        long = {"messages": QUESTION, "max_tokens": 1000, "temperature": 0}
        codes = [None] * 6
        threads = [threading.Thread(target=lambda i=i: codes.__setitem__(i, post(s, long, key=None).status_code))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert set(codes) == {429, 504} and codes.count(504) == 1  # one in flight, until its time ran out
        assert post(s, {"messages": QUESTION, "max_tokens": 1}, key=None).status_code == 200
    finally:
        rc = s.stop()
    assert rc == 0 and s.log.read_text().rstrip().endswith("rlkit serve: stopped")


def test_a_public_host_warns_and_a_busy_port_is_one_line(tiny_run, tmp_path, cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = cli("serve", tiny_run, "--port", taken.getsockname()[1])
    assert result.exit_code == 1 and result.stderr.startswith("error: --host 127.0.0.1 --port")
    s = Server(tiny_run, tmp_path / "log.txt", "--host", "0.0.0.0")
    try:
        assert s.log.read_text().startswith("warning: --host 0.0.0.0 exposes the model")
        assert listening_addresses(s.port) == ["0.0.0.0"]
    finally:
        assert s.stop(signal.SIGTERM) == 0
