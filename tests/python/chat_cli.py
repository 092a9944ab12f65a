"""What the OpenAI and Anthropic client scripts share: their arguments and the one
JSON line each prints (see either script's docstring for the shapes)."""

import argparse
import json
import sys


def parse_args(doc: str, max_tokens_default: int | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--message", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=max_tokens_default)
    parser.add_argument("--user")
    parser.add_argument("--timeout", type=float, default=60.0)
    return parser.parse_args()


def missing_sdk(script: str, error: ImportError) -> None:
    print(f"{script}: {error}; run: pip install openai anthropic", file=sys.stderr)
    sys.exit(2)


def print_failure(error: Exception, text: list[str]) -> None:
    """Any SDK failure, including a connection dropped mid-stream."""
    print(
        json.dumps(
            {
                "ok": False,
                "status": getattr(error, "status_code", None),
                "error": str(error),
                "error_type": type(error).__name__,
                "partial_text": "".join(text),
            }
        )
    )


def print_success(text: list[str], model, usage, finish_reason) -> None:
    print(json.dumps({"ok": True, "text": "".join(text), "model": model, "usage": usage, "finish_reason": finish_reason}))
