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

import argparse
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--message", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--user")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    try:
        import anthropic
    except ImportError as e:
        print(f"anthropic_client.py: {e}; run: pip install openai anthropic", file=sys.stderr)
        sys.exit(2)

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
        print(
            json.dumps(
                {
                    "ok": False,
                    "status": getattr(e, "status_code", None),
                    "error": str(e),
                    "error_type": type(e).__name__,
                    "partial_text": "".join(text),
                }
            )
        )
        return
    usage = {"input": message.usage.input_tokens, "output": message.usage.output_tokens}
    print(
        json.dumps(
            {
                "ok": True,
                "text": "".join(text),
                "model": message.model,
                "usage": usage,
                "finish_reason": message.stop_reason,
            }
        )
    )


if __name__ == "__main__":
    main()
