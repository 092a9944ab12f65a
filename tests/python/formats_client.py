#!/usr/bin/env python3
"""Many calls through the official SDKs of every wire format, in one process.

    formats_client.py CASES_JSON

CASES_JSON is a JSON array of {"api", "base", "key", "model", "text", "stream"}:
api "chat" (OpenAI Chat Completions) and "responses" (OpenAI Responses) use the
openai SDK, "messages" the anthropic SDK, "gemini" the google-genai SDK. `base` is
the SDK's base URL as is (the OpenAI SDK's includes /v1). Prints one JSON line: an
array with, for each case in order, {"ok": true, "text", "usage": {"input",
"output"}, "finish"} or {"ok": false, "status", "error"}. SDK retries are off.
"""

import json
import sys


def chat(case, stream):
    import openai

    client = openai.OpenAI(base_url=case["base"], api_key=case["key"], max_retries=0, timeout=60)
    messages = [{"role": "user", "content": case["text"]}]
    if not stream:
        done = client.chat.completions.create(model=case["model"], messages=messages)
        usage = {"input": done.usage.prompt_tokens, "output": done.usage.completion_tokens}
        return done.choices[0].message.content, usage, done.choices[0].finish_reason
    text, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=case["model"], messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = {"input": chunk.usage.prompt_tokens, "output": chunk.usage.completion_tokens}
    return "".join(text), usage, finish


def responses(case, stream):
    import openai

    client = openai.OpenAI(base_url=case["base"], api_key=case["key"], max_retries=0, timeout=60)
    params = {"model": case["model"], "input": case["text"], "store": False}
    if not stream:
        done = client.responses.create(**params)
    else:
        done = None
        deltas = []
        for event in client.responses.create(**params, stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                done = event.response
        assert done is not None, "the stream ended without response.completed"
        assert "".join(deltas) == done.output_text, (deltas, done.output_text)
    usage = {"input": done.usage.input_tokens, "output": done.usage.output_tokens}
    return done.output_text, usage, done.status


def messages(case, stream):
    import anthropic

    client = anthropic.Anthropic(base_url=case["base"], api_key=case["key"], max_retries=0, timeout=60)
    params = {"model": case["model"], "max_tokens": 256, "messages": [{"role": "user", "content": case["text"]}]}
    if not stream:
        done = client.messages.create(**params)
    else:
        with client.messages.stream(**params) as events:
            for _ in events:
                pass
            done = events.get_final_message()
    text = "".join(block.text for block in done.content if block.type == "text")
    return text, {"input": done.usage.input_tokens, "output": done.usage.output_tokens}, done.stop_reason


def gemini(case, stream):
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=case["key"], http_options=types.HttpOptions(base_url=case["base"], timeout=60_000))
    if not stream:
        chunks = [client.models.generate_content(model=case["model"], contents=case["text"])]
    else:
        chunks = list(client.models.generate_content_stream(model=case["model"], contents=case["text"]))
    text = "".join(chunk.text or "" for chunk in chunks)
    last = chunks[-1]
    usage = {"input": last.usage_metadata.prompt_token_count, "output": last.usage_metadata.candidates_token_count}
    return text, usage, str(last.candidates[0].finish_reason)


APIS = {"chat": chat, "responses": responses, "messages": messages, "gemini": gemini}


def main() -> None:
    results = []
    for case in json.loads(sys.argv[1]):
        try:
            text, usage, finish = APIS[case["api"]](case, case.get("stream", False))
            results.append({"ok": True, "text": text, "usage": usage, "finish": finish})
        except Exception as error:  # noqa: BLE001 - every failure is reported, not raised
            status = getattr(error, "status_code", None) or getattr(error, "code", None)
            results.append({"ok": False, "status": status, "error": f"{type(error).__name__}: {error}"})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
