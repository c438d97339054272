"""The official `anthropic` Python SDK against a started llmgate.

Run as `python tests/sdk/anthropic_suite.py path/to/llmgate` (`.ci/run`
does, in a throwaway venv with `anthropic` installed). It starts a scripted
OpenAI-compatible upstream in this process (answering from a script and
recording what it was sent), starts `llmgate serve` on port 0 routing to
it, and drives the gateway's Messages front (`POST /v1/messages`) with the
SDK as an application would: `messages.create` and `messages.stream`, text
and tool use, a tool-result turn, `models.list`, and an error the SDK
raises as its own.
Any failed check exits non-zero.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

USAGE = {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}


# === the scripted upstream (OpenAI-compatible, as vLLM speaks) ===


def chunk(delta, finish=None):
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def stream_of(chunks):
    chunks = chunks + [{"id": "c", "object": "chat.completion.chunk", "created": 1,
                        "model": "served", "choices": [], "usage": USAGE}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return "text/event-stream", body.encode()


def openai_answer(body):
    """What the scripted server answers: a tool call when tools are offered
    and the last turn is the user's, else text."""
    last = body["messages"][-1]
    calls_tool = bool(body.get("tools")) and last["role"] == "user"
    if body.get("stream"):
        if calls_tool:
            return stream_of([
                chunk({"role": "assistant", "content": "Let me check."}),
                chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
                chunk({}, "tool_calls"),
            ])
        return stream_of([
            chunk({"role": "assistant", "content": "Hello"}),
            chunk({"content": " from"}),
            chunk({"content": " vLLM."}),
            chunk({}, "stop"),
        ])
    if calls_tool:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
        finish = "tool_calls"
    elif last["role"] == "tool":
        message = {"role": "assistant", "content": f"It is {last['content']}."}
        finish = "stop"
    else:
        message = {"role": "assistant", "content": "Paris."}
        finish = "stop"
    answer = {
        "id": "c", "object": "chat.completion", "created": 1, "model": "served",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }
    return "application/json", json.dumps(answer).encode()


RECEIVED = []


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length))
        RECEIVED.append(body)
        kind, payload = openai_answer(body)
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


# === the gateway ===


def start_gateway(binary, upstream_url):
    config = f"""
listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0, metrics: off }}
upstreams:
  vllm: {{ kind: openai, endpoints: [{upstream_url}] }}
routes:
  - model: m
    pools: [{{ upstream: vllm, model: upstream-model }}]
"""
    path = os.path.join(tempfile.mkdtemp(prefix="llmgate-sdk-"), "routing.yaml")
    with open(path, "w") as f:
        f.write(config)
    gateway = subprocess.Popen(
        [binary, "serve", "--config", path, "--no-watch"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    line = ""
    for _ in range(5):
        line = gateway.stdout.readline()
        if "HTTP (OpenAI API) listening on" in line:
            return gateway, line.split()[-1]
    gateway.kill()
    sys.exit(f"the gateway did not announce its HTTP address (last line: {line!r})")


def last_sent():
    return RECEIVED[-1]


# === the suite ===


def create_text(client):
    message = client.messages.create(
        model="m",
        max_tokens=100,
        system="Answer in one word.",
        messages=[{"role": "user", "content": "Capital of France?"}],
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u-1"},
        # Sampling fields this SDK no longer names, as callers still send them.
        extra_body={"temperature": 0.2, "top_k": 20},
    )
    assert message.type == "message" and message.role == "assistant", message
    assert [block.type for block in message.content] == ["text"], message
    assert message.content[0].text == "Paris.", message
    assert message.stop_reason == "end_turn", message
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 8), message
    sent = last_sent()
    assert sent["messages"][0] == {"role": "system", "content": "Answer in one word."}, sent
    expected = {"model": "upstream-model", "max_tokens": 100, "stop": ["\n\nHuman:"],
                "temperature": 0.2, "top_k": 20, "user": "u-1"}
    for field, value in expected.items():
        assert sent.get(field) == value, (field, sent)


def create_tool_use(client):
    message = client.messages.create(
        model="m",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use", message
    (call,) = message.content
    assert (call.type, call.id, call.name, call.input) == (
        "tool_use", "call_b", "get_weather", {"city": "Oslo"}), call
    sent = last_sent()
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"], sent
    assert sent["tool_choice"] == "required", sent


def tool_result_turn(client):
    message = client.messages.create(
        model="m",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_b", "name": "get_weather",
                 "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_b", "content": "4C, rain"}]},
        ],
    )
    assert message.content[0].text == "It is 4C, rain.", message
    sent = last_sent()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_b", sent
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}, sent
    assert sent[2] == {"role": "tool", "tool_call_id": "call_b", "content": "4C, rain"}, sent


def stream_text(client):
    pieces = []
    with client.messages.stream(
        model="m",
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        for text in stream.text_stream:
            pieces.append(text)
        message = stream.get_final_message()
    assert pieces == ["Hello", " from", " vLLM."], pieces
    assert message.content[0].text == "Hello from vLLM.", message
    assert message.stop_reason == "end_turn", message
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 8), message
    assert last_sent()["stream"] is True, last_sent()


def stream_tool_use(client):
    partial = []
    with client.messages.stream(
        model="m",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                partial.append(event.partial_json)
        message = stream.get_final_message()
    assert "".join(partial) == '{"city":"Paris"}', partial
    assert [block.type for block in message.content] == ["text", "tool_use"], message
    assert message.content[0].text == "Let me check.", message
    call = message.content[1]
    assert (call.id, call.name, call.input) == ("call_a", "get_weather", {"city": "Paris"}), call
    assert message.stop_reason == "tool_use", message


def models_are_listed(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["m"], ids


def unknown_model_is_not_found(client):
    try:
        client.messages.create(
            model="not-routed",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    except anthropic.NotFoundError as err:
        assert err.body["type"] == "error", err.body
        assert err.body["error"]["type"] == "not_found_error", err.body
    else:
        raise AssertionError("a model that is not routed must be a 404")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: anthropic_suite.py path/to/llmgate")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway, addr = start_gateway(sys.argv[1], f"http://127.0.0.1:{upstream.server_port}")
    try:
        client = anthropic.Anthropic(base_url=f"http://{addr}", api_key="any", max_retries=0,
                                     timeout=20)
        for check in [create_text, create_tool_use, tool_result_turn, stream_text,
                      stream_tool_use, models_are_listed, unknown_model_is_not_found]:
            check(client)
            print(f"ok {check.__name__}")
    finally:
        gateway.kill()
        gateway.wait()
        upstream.shutdown()


if __name__ == "__main__":
    main()
