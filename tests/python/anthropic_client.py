#!/usr/bin/env python3
"""One message through the official Anthropic Python SDK; prints one JSON line.

    anthropic_client.py --base-url URL --api-key KEY --model M --message TEXT
                        [--stream] [--max-tokens N] [--user U] [--timeout SECONDS]

URL is the SDK's base_url as is, without the API version prefix
(e.g. http://127.0.0.1:8080); the SDK appends /v1/messages. --max-tokens defaults
to 256 (the Messages API requires it); --user is sent as metadata.user_id.

Prints {"ok": true, "text": ..., "model": ..., "usage": {"input": N, "output": M},
"finish_reason": <stop_reason>}, or on any SDK exception {"ok": false,
"status": <HTTP status or null>, "error": str(e), "error_type": <exception class>,
"partial_text": <text streamed before the failure>}. Exits 0 either way; exits 2
when the SDK is not installed (pip install openai anthropic). SDK retries are off
(max_retries=0) so that errors surface as they happened.
"""

import chat_cli


def main() -> None:
    args = chat_cli.parse_args(__doc__, max_tokens_default=256)

    try:
        import anthropic
    except ImportError as e:
        chat_cli.missing_sdk("anthropic_client.py", e)

    client = anthropic.Anthropic(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    params = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": args.message}],
    }
    if args.user is not None:
        params["metadata"] = {"user_id": args.user}

    text = []
    try:
        if args.stream:
            with client.messages.stream(**params) as stream:
                for piece in stream.text_stream:
                    text.append(piece)
                message = stream.get_final_message()
        else:
            message = client.messages.create(**params)
            text = [block.text for block in message.content if block.type == "text"]
    except Exception as e:  # every SDK failure, including a connection dropped mid-stream
        chat_cli.print_failure(e, text)
        return
    usage = {"input": message.usage.input_tokens, "output": message.usage.output_tokens}
    chat_cli.print_success(text, message.model, usage, message.stop_reason)


if __name__ == "__main__":
    main()
