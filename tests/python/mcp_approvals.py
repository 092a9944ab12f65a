#!/usr/bin/env python3
"""An execution that pauses for approval, through the official Python `mcp` SDK.

    mcp_approvals.py legacy|modern MCP_URL BASE CALLER_KEY APPROVER_KEY CODE

- `legacy` (2025-11-25, `initialize`): `execute` answers a plain result saying where
  to approve and how to go on; the approver approves over HTTP; `execute` with
  `resume` gives the result.
- `modern` (2026-07-28, `server/discover`, URL-mode elicitation declared): `execute`
  answers an `InputRequiredResult` with one URL elicitation per approval; the
  approver approves; the retry with the request state and the accepted elicitation
  gives the result.

Prints one JSON line with what it saw; exits non-zero on failure.
"""

import asyncio
import json
import sys
import urllib.request

MODE, MCP_URL, BASE, CALLER_KEY, APPROVER_KEY, CODE = sys.argv[1:7]


def approve(approval_id):
    request = urllib.request.Request(
        f"{BASE}/v1/approvals/{approval_id}",
        data=json.dumps({"decision": "approve"}).encode(),
        headers={"authorization": "Bearer " + APPROVER_KEY, "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


async def run():
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    seen = {}

    async def on_elicit(context, params):
        # Only retries carry the answer; nothing asks this callback during the test.
        return types.ElicitResult(action="accept")

    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(MCP_URL, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1], elicitation_callback=on_elicit) as session:
                if MODE == "modern":
                    await session.discover()
                    first = await session.call_tool("execute", {"code": CODE}, allow_input_required=True)
                    seen["first_type"] = type(first).__name__
                    requests = first.input_requests or {}
                    seen["requests"] = {
                        key: {"mode": req.params.mode, "url": req.params.url} for key, req in requests.items()
                    }
                    for key in requests:
                        seen["decided"] = approve(key)["status"]
                    answers = {key: types.ElicitResult(action="accept") for key in requests}
                    final = await session.call_tool(
                        "execute",
                        {"code": CODE},
                        input_responses=answers,
                        request_state=first.request_state,
                        allow_input_required=True,
                    )
                else:
                    await session.initialize()
                    first = await session.call_tool("execute", {"code": CODE})
                    seen["first_type"] = type(first).__name__
                    seen["first_text"] = [c.text for c in first.content if getattr(c, "type", None) == "text"]
                    seen["first_error"] = bool(first.is_error)
                    structured = first.structured_content or {}
                    for approval in structured.get("approvals", []):
                        seen["decided"] = approve(approval["id"])["status"]
                    final = await session.call_tool("execute", {"resume": structured.get("execution_id")})
                seen["protocol"] = session.protocol_version
                seen["final_error"] = bool(final.is_error)
                seen["final_structured"] = final.structured_content
    print(json.dumps(seen))


asyncio.run(run())
