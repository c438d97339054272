"""The official `openai` Python SDK against a started llmgate.

Run as `python tests/sdk/openai_suite.py path/to/llmgate` (`.ci/run` does,
in a throwaway venv with `openai` installed). It starts a scripted upstream
in this process (an OpenAI-compatible server and an Anthropic one, each
answering from a script and recording what it was sent), starts
`llmgate serve` on port 0 routing to them, and drives the gateway's HTTP
front with the SDK as an application would: streamed and whole tool calls,
a tool-result turn, response_format, seed and vendor extras as they arrive
upstream, a tool call translated from Anthropic, and embeddings in both
encodings (the SDK asks for base64 by default). Any failed check
exits non-zero.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# === the scripted upstream ===


def sse(events):
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()


def chunk(delta, finish=None):
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def openai_answer(body):
    """What the scripted OpenAI-compatible server answers to `body`."""
    last = body["messages"][-1]
    if body.get("stream"):
        events = [
            chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "served",
             "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 8,
                                      "total_tokens": 38}},
        ]
        return "text/event-stream", sse(events) + b"data: [DONE]\n\n"
    if last["role"] == "tool":
        message = {"role": "assistant", "content": f"It is {last['content']}."}
        finish = "stop"
    elif body.get("tools"):
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": '{"city": "Paris"}'}
        finish = "stop"
    answer = {
        "id": "c", "object": "chat.completion", "created": 1, "model": "served",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38},
    }
    return "application/json", json.dumps(answer).encode()


def anthropic_answer(body):
    """What the scripted Anthropic server answers: one tool_use, streamed."""
    events = [
        {"type": "message_start", "message": {"id": "msg", "type": "message",
         "role": "assistant", "model": "claude-x", "content": [], "stop_reason": None,
         "usage": {"input_tokens": 20, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block":
         {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "input_json_delta", "partial_json": '"Rome"}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
         "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    ]
    text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return "text/event-stream", text.encode()


def embeddings_answer(body):
    """What the scripted server answers to `/v1/embeddings`: a fixed vector
    per input, listed as OpenAI lists them, as floats (what the gateway
    asks for)."""
    vectors = [[1.0, 0.125], [0.5, -0.25]]
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i % 2]}
                 for i in range(len(body["input"]))],
        "model": "served-embedder",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    return "application/json", json.dumps(answer).encode()


RECEIVED = []


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length))
        RECEIVED.append((self.path, body))
        if self.path == "/v1/messages":
            kind, payload = anthropic_answer(body)
        elif self.path == "/v1/embeddings":
            kind, payload = embeddings_answer(body)
        else:
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
  claude: {{ kind: anthropic, endpoints: [{upstream_url}] }}
routes:
  - model: m
    pools: [{{ upstream: vllm, model: upstream-model }}]
  - model: claude
    pools: [{{ upstream: claude, model: claude-x }}]
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
    for _ in range(5):
        line = gateway.stdout.readline()
        if "HTTP (OpenAI API) listening on" in line:
            return gateway, line.split()[-1]
    gateway.kill()
    sys.exit(f"the gateway did not announce its HTTP address (last line: {line!r})")


def last_sent():
    return RECEIVED[-1][1]


# === the suite ===


def streamed_tool_call(client):
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    calls, finish, usage = {}, None, None
    for part in stream:
        if part.usage:
            usage = part.usage
        for choice in part.choices:
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function and piece.function.name:
                    call["name"] += piece.function.name
                if piece.function and piece.function.arguments:
                    call["arguments"] += piece.function.arguments
            finish = choice.finish_reason or finish
    assert calls == {0: {"id": "call_a", "name": "get_weather",
                         "arguments": '{"city":"Paris"}'}}, calls
    assert finish == "tool_calls", finish
    assert usage and usage.completion_tokens == 8, usage
    assert last_sent()["tools"] == [WEATHER], last_sent()
    assert last_sent()["tool_choice"] == "required", last_sent()


def whole_tool_call(client):
    answer = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_b", "get_weather", {"city": "Oslo"}), call


def tool_result_turn(client):
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "4C, rain"},
    ]
    answer = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "It is 4C, rain.", answer
    assert last_sent()["messages"] == messages, last_sent()["messages"]


def extras_arrive_unchanged(client):
    schema = {"name": "city", "schema": {"type": "object",
              "properties": {"city": {"type": "string"}}}, "strict": True}
    answer = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "A city, as JSON"}],
        response_format={"type": "json_schema", "json_schema": schema},
        seed=42,
        user="u-1",
        logprobs=True,
        top_logprobs=2,
        frequency_penalty=0.5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert json.loads(answer.choices[0].message.content) == {"city": "Paris"}, answer
    sent = last_sent()
    expected = {
        "model": "upstream-model",
        "response_format": {"type": "json_schema", "json_schema": schema},
        "seed": 42, "user": "u-1", "logprobs": True, "top_logprobs": 2,
        "frequency_penalty": 0.5, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
    }
    for field, value in expected.items():
        assert sent.get(field) == value, (field, sent)


def anthropic_tool_call_translated(client):
    stream = client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER],
        stream=True,
    )
    arguments, names, finish = "", [], None
    for part in stream:
        for choice in part.choices:
            for piece in choice.delta.tool_calls or []:
                if piece.function and piece.function.name:
                    names.append(piece.function.name)
                arguments += (piece.function and piece.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert names == ["get_weather"], names
    assert json.loads(arguments) == {"city": "Rome"}, arguments
    assert finish == "tool_calls", finish
    sent = last_sent()
    assert sent["tools"][0]["input_schema"] == WEATHER["function"]["parameters"], sent


def refused_field_is_a_400_naming_it(client):
    try:
        client.chat.completions.create(
            model="claude",
            messages=[{"role": "user", "content": "hi"}],
            seed=1,
        )
    except openai.BadRequestError as err:
        assert err.body and err.body.get("param") == "seed", err.body
    else:
        raise AssertionError("seed to an Anthropic upstream must be refused")


def embeddings_in_both_encodings(client):
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    answer = client.embeddings.create(model="m", input=["a", "b"])
    assert [d.embedding for d in answer.data] == [[1.0, 0.125], [0.5, -0.25]], answer
    assert answer.usage.prompt_tokens == 4 and answer.usage.total_tokens == 4, answer
    assert answer.model == "served-embedder", answer
    sent = last_sent()
    assert RECEIVED[-1][0] == "/v1/embeddings", RECEIVED[-1]
    assert sent == {"model": "upstream-model", "input": ["a", "b"],
                    "encoding_format": "float"}, sent
    answer = client.embeddings.create(model="m", input="a", encoding_format="float",
                                      dimensions=2)
    assert answer.data[0].embedding == [1.0, 0.125], answer
    assert last_sent()["dimensions"] == 2, last_sent()


def embeddings_refused_where_the_upstream_has_none(client):
    try:
        client.embeddings.create(model="claude", input="a")
    except openai.BadRequestError as err:
        assert err.body and err.body.get("param") == "model", err.body
        assert "no embeddings" in err.body.get("message", ""), err.body
    else:
        raise AssertionError("embeddings from an Anthropic upstream must be refused")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: openai_suite.py path/to/llmgate")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway, addr = start_gateway(sys.argv[1], f"http://127.0.0.1:{upstream.server_port}")
    try:
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="any", max_retries=0,
                               timeout=20)
        for check in [streamed_tool_call, whole_tool_call, tool_result_turn,
                      extras_arrive_unchanged, anthropic_tool_call_translated,
                      refused_field_is_a_400_naming_it, embeddings_in_both_encodings,
                      embeddings_refused_where_the_upstream_has_none]:
            check(client)
            print(f"ok {check.__name__}")
    finally:
        gateway.kill()
        gateway.wait()
        upstream.shutdown()


if __name__ == "__main__":
    main()
