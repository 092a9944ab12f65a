#!/usr/bin/env python3
"""Clients that sign in at the organisation's identity provider, then use sandgate.

    sso_clients.py sdk --issuer URL --sandgate URL --user NAME
        Gets an access token for sandgate (the `sdk-client` of tests/idp, through the
        provider's login page) and calls the proxy with it through the official OpenAI
        (chat completions) and Anthropic (messages) SDKs. Prints
        {"openai": TEXT, "anthropic": TEXT, "claims": {...}}.

    sso_clients.py mcp --sandgate URL --user NAME
        Connects the official MCP Python SDK to sandgate's /mcp with no credential, and
        lets its OAuth client do the whole authorization flow: the 401's
        resource_metadata, the protected-resource metadata, the provider's metadata,
        dynamic client registration, PKCE with `resource`, the login page (driven by
        tests/python/idp_flows.py), the code exchange. Then calls `execute`. Prints
        {"result": ..., "token_claims": {...}}.

On failure prints {"error": str, "error_type": ...} and exits 1.
"""

import argparse
import asyncio
import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import idp_flows  # noqa: E402


def sdk(args) -> dict:
    import anthropic
    import openai

    tokens = idp_flows.login(
        args.issuer, "sdk-client", "http://127.0.0.1/sdk-callback", args.user,
        resource=args.sandgate, client_secret="sdk-secret",
    )
    token = tokens["access_token"]
    chat = openai.OpenAI(base_url=f"{args.sandgate}/v1", api_key=token, max_retries=0)
    answer = chat.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "hello"}])
    claude = anthropic.Anthropic(base_url=args.sandgate, auth_token=token, api_key=None, max_retries=0)
    message = claude.messages.create(model=args.model, max_tokens=64, messages=[{"role": "user", "content": "hello"}])
    return {
        "openai": answer.choices[0].message.content,
        "anthropic": "".join(b.text for b in message.content if b.type == "text"),
        "claims": idp_flows.jwt_claims(token),
    }


async def mcp(args) -> dict:
    from mcp import ClientSession
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    class Memory:
        def __init__(self):
            self.tokens = None
            self.client = None

        async def get_tokens(self):
            return self.tokens

        async def set_tokens(self, tokens):
            self.tokens = tokens

        async def get_client_info(self):
            return self.client

        async def set_client_info(self, info):
            self.client = info

    redirect_uri = "http://127.0.0.1:33418/callback"
    landed: dict = {}

    async def redirect_handler(url: str) -> None:
        # The person at the provider's login page; the browser stops at the redirect.
        final = await asyncio.to_thread(idp_flows.follow_login, url, args.user, redirect_uri=redirect_uri)
        landed.update(urllib.parse.parse_qs(urllib.parse.urlparse(final).query))

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=landed["code"][0], state=landed.get("state", [None])[0], iss=landed.get("iss", [None])[0],
        )

    storage = Memory()
    server = f"{args.sandgate}/mcp"
    auth = OAuthClientProvider(
        server_url=server,
        client_metadata=OAuthClientMetadata(
            client_name="sandgate sso test", redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"], response_types=["code"],
            token_endpoint_auth_method="none", scope="openid email groups",
        ),
        storage=storage, redirect_handler=redirect_handler, callback_handler=callback_handler,
    )
    async with create_mcp_http_client(auth=auth) as http:
        async with streamable_http_client(server, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                result = await session.call_tool("execute", {"code": "return 6 * 7"})
    return {
        "result": result.structured_content,
        "is_error": bool(result.is_error),
        "token_claims": idp_flows.jwt_claims(storage.tokens.access_token),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["sdk", "mcp"])
    parser.add_argument("--issuer")
    parser.add_argument("--sandgate", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--model", default="sso-model")
    args = parser.parse_args()
    try:
        out = sdk(args) if args.mode == "sdk" else asyncio.run(mcp(args))
    except BaseException as e:  # noqa: BLE001 - report every failure as data
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        print(json.dumps({"error": str(e), "error_type": type(e).__name__}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
