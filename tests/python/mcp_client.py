#!/usr/bin/env python3
"""Drive sandgate's MCP server with the official Python `mcp` SDK; prints JSON lines.

    mcp_client.py --http URL [--api-key KEY]          # streamable HTTP
    mcp_client.py --stdio COMMAND [ARG ...]            # a server process on stdio
                                                       # (SANDGATE_API_KEY is passed on)

Reads a JSON array of calls from stdin, e.g.
    [{"tool": "search", "arguments": {"query": "echo"}}, {"tool": "execute", ...}]
An argument `"session": "$session"` is replaced by the `session` of the latest result
that had one.

Prints, one JSON object per line:
    {"tools": [{"name": ..., "description": ...}, ...]}            (the tools/list result)
    {"call": TOOL, "is_error": bool, "text": [str, ...], "structured": ...,
     "logs": [str, ...], "progress": [str, ...]}                  (one per call)
`logs` are the `notifications/message` data received during the call and `progress`
the `notifications/progress` messages. On a failure outside a tool result it prints
{"error": str, "error_type": ...} and exits 1; it exits 2 when the SDK is missing
(pip install mcp).
"""

import argparse
import asyncio
import json
import os
import sys


async def run(args, calls) -> None:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    logs: list[str] = []

    async def on_log(params) -> None:
        logs.append(params.data if isinstance(params.data, str) else json.dumps(params.data))

    async def session_run(read, write) -> None:
        async with ClientSession(read, write, logging_callback=on_log) as session:
            await session.initialize()
            listed = await session.list_tools()
            print(json.dumps({"tools": [{"name": t.name, "description": t.description} for t in listed.tools]}))
            sys.stdout.flush()
            last_session = None
            for call in calls:
                logs.clear()
                arguments = dict(call.get("arguments", {}))
                # "$session" stands for the session the latest result returned.
                if arguments.get("session") == "$session":
                    arguments["session"] = last_session
                progress: list[str] = []

                async def on_progress(done, total, message, progress=progress) -> None:
                    progress.append(message or str(done))

                result = await session.call_tool(call["tool"], arguments, progress_callback=on_progress)
                if isinstance(result.structured_content, dict) and result.structured_content.get("session"):
                    last_session = result.structured_content["session"]
                # Notifications may trail the result by a moment on some transports.
                await asyncio.sleep(0.05)
                print(json.dumps({
                    "call": call["tool"],
                    "is_error": bool(result.is_error),
                    "text": [c.text for c in result.content if getattr(c, "type", None) == "text"],
                    "structured": result.structured_content,
                    "logs": list(logs),
                    "progress": progress,
                }))
                sys.stdout.flush()

    if args.http:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
        async with create_mcp_http_client(headers=headers) as http:
            async with streamable_http_client(args.http, http_client=http) as streams:
                await session_run(streams[0], streams[1])
    else:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SANDGATE_API_KEY", "SANDGATE_CACHE_DIR", "RUST_LOG")}
        params = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:], env=env)
        async with stdio_client(params) as streams:
            await session_run(streams[0], streams[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    transport = parser.add_mutually_exclusive_group(required=True)
    transport.add_argument("--http")
    transport.add_argument("--stdio", nargs=argparse.REMAINDER)
    parser.add_argument("--api-key")
    args = parser.parse_args()
    try:
        import mcp  # noqa: F401
    except ImportError as e:
        print(f"mcp_client.py: {e}; run: pip install mcp", file=sys.stderr)
        sys.exit(2)
    calls = json.load(sys.stdin)
    try:
        asyncio.run(run(args, calls))
    except BaseException as e:  # noqa: BLE001 - report every failure as data
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        print(json.dumps({"error": str(e), "error_type": type(e).__name__}))
        sys.exit(1)


if __name__ == "__main__":
    main()
