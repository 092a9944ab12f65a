#!/usr/bin/env python3
"""One chat completion through the official OpenAI Python SDK; prints one JSON line.

    openai_client.py --base-url URL --api-key KEY --model M --message TEXT
                     [--stream] [--max-tokens N] [--user U] [--timeout SECONDS]

URL is the SDK's base_url as is, so it includes the API version prefix
(e.g. http://127.0.0.1:8080/v1); the SDK appends /chat/completions.

Prints {"ok": true, "text": ..., "model": ..., "usage": {"input": N, "output": M},
"finish_reason": ...} (usage is null when a stream carried none), or on any SDK
exception {"ok": false, "status": <HTTP status or null>, "error": str(e),
"error_type": <exception class>, "partial_text": <text streamed before the failure>}.
Exits 0 either way; exits 2 when the SDK is not installed (pip install openai anthropic).
SDK retries are off (max_retries=0) so that errors surface as they happened.
"""

import chat_cli


def main() -> None:
    args = chat_cli.parse_args(__doc__, max_tokens_default=None)

    try:
        import openai
    except ImportError as e:
        chat_cli.missing_sdk("openai_client.py", e)

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    params = {"model": args.model, "messages": [{"role": "user", "content": args.message}]}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.user is not None:
        params["user"] = args.user

    text = []
    try:
        if args.stream:
            model = None
            usage = None
            finish_reason = None
            stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = {"input": chunk.usage.prompt_tokens, "output": chunk.usage.completion_tokens}
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        text.append(choice.delta.content)
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
        else:
            completion = client.chat.completions.create(**params)
            model = completion.model
            choice = completion.choices[0]
            text.append(choice.message.content or "")
            finish_reason = choice.finish_reason
            usage = None
            if completion.usage is not None:
                usage = {"input": completion.usage.prompt_tokens, "output": completion.usage.completion_tokens}
    except Exception as e:  # every SDK failure, including a connection dropped mid-stream
        chat_cli.print_failure(e, text)
        return
    chat_cli.print_success(text, model, usage, finish_reason)


if __name__ == "__main__":
    main()
