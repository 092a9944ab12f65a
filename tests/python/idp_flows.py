#!/usr/bin/env python3
"""Browser-less sign-in flows against the test identity provider (tests/idp/server.mjs).

The provider's login pages are oidc-provider's development interactions: any login name
with any password signs in. This module fills those pages in over plain HTTP (standard
library only), so tests get real tokens through the real authorization endpoint.

    login(issuer, client_id, redirect_uri, username, resource=None,
          scope="openid email groups", client_secret=None) -> token response dict
    follow_login(url, username, browser=None) -> the final redirect URL (code & state)
    device_login(uri, username, user_code=None, browser=None) -> None
    device_authorize(...) / poll_device_token(...) / device_flow(...)
    refresh(...), client_credentials(...), register_client(...), discover(...)
    jwt_claims(token) -> the payload of a JWT, not verified

CLI (prints JSON on stdout):

    idp_flows.py token --issuer URL --client ID [--secret S] --redirect URI --user NAME
                       [--resource R] [--scope S] [--decode]
    idp_flows.py device --issuer URL --client ID [--secret S] --user NAME [--resource R]
                        [--scope S] [--decode]
    idp_flows.py client-credentials --issuer URL --client ID --secret S [--resource R]
                                    [--scope S] [--decode]
    idp_flows.py follow --user NAME URL      (prints {"location": final redirect URL})

--decode adds `access_token_claims` and `id_token_claims` (payloads, not verified).
Exits 1 with {"error": ...} on stdout when a step fails.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.cookiejar
import json
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_PASSWORD = "any-password"


class IdpError(Exception):
    """A flow step failed; the message carries the provider's answer."""


# --- HTTP --------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    url: str
    headers: Message
    body: str

    @property
    def location(self) -> str | None:
        loc = self.headers.get("Location")
        return urllib.parse.urljoin(self.url, loc) if loc else None

    def json(self) -> dict:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Browser:
    """An HTTP client that keeps cookies and never follows redirects by itself.

    Reusing one Browser across flows reuses the provider's session cookie, so a second
    authorization for the same user does not show the login page again."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def request(self, method: str, url: str, form: dict | None = None,
                headers: dict | None = None, body: bytes | None = None) -> Response:
        hdrs = {"User-Agent": "idp_flows", **(headers or {})}
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=body, headers=hdrs, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, url, resp.headers, resp.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as err:  # 3xx (not followed) and 4xx/5xx
            with err:
                return Response(err.code, url, err.headers, err.read().decode("utf-8", "replace"))


# --- pages ---------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    id: str | None
    fields: dict = field(default_factory=dict)


class _PageParser(HTMLParser):
    """Collects the forms (with their <input> values) and the title of a page."""

    def __init__(self):
        super().__init__()
        self.forms: list[Form] = []
        self.title = ""
        self.text: list[str] = []
        self._form: Form | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), a.get("method", "get").lower(), a.get("id"))
            self.forms.append(self._form)
        elif tag == "input" and a.get("name"):
            owner = self._form
            if a.get("form"):  # an input outside its form, tied to it by id
                owner = next((f for f in self.forms if f.id == a["form"]), owner)
            if owner is not None:
                owner.fields[a["name"]] = a.get("value", "")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif data.strip():
            self.text.append(data.strip())


def _parse(body: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(body)
    parser.close()
    return parser


def _origin(url: str) -> tuple:
    u = urllib.parse.urlsplit(url)
    return (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))


def _drive(browser: Browser, url: str, username: str, password: str,
           user_code: str | None = None, redirect_uri: str | None = None) -> str | Response:
    """Follows redirects and submits the provider's forms until the browser would leave
    the provider (returns the URL it would go to) or a page without a form is reached
    (returns that response).

    A URL leaves the provider when it is on another origin than `url` or starts with
    `redirect_uri`."""
    home = _origin(url)

    def leaves(target: str) -> bool:
        return _origin(target) != home or bool(redirect_uri and target.startswith(redirect_uri))

    method, target, form = "GET", url, None
    for _ in range(40):
        resp = browser.request(method, target, form=form)
        if 300 <= resp.status < 400:
            loc = resp.location
            if not loc:
                raise IdpError(f"{resp.status} without Location at {target}")
            if leaves(loc):
                return loc
            method, target, form = "GET", loc, None
            continue
        page = _parse(resp.body)
        if resp.status != 200:
            raise IdpError(f"{resp.status} at {target}: {' '.join(page.text) or resp.body[:500]}")
        if not page.forms:
            return resp
        chosen = page.forms[0]
        fields = dict(chosen.fields)
        if "login" in fields:  # the sign-in page
            fields.update(login=username, password=password)
        elif "user_code" in fields and not fields["user_code"]:  # device: enter the code
            if not user_code:
                raise IdpError("the provider asks for a device user code and none was given")
            fields["user_code"] = user_code
        # Anything else (consent "Continue", device confirmation, auto-submitting form_post
        # pages) is submitted as it is.
        action = urllib.parse.urljoin(resp.url, chosen.action or resp.url)
        if leaves(action):  # response_mode=form_post back to the client
            return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(fields)
        if chosen.method == "post":
            method, target, form = "POST", action, fields
        else:
            method, target, form = "GET", action + "?" + urllib.parse.urlencode(fields), None
    raise IdpError(f"too many steps starting at {url}")


def follow_login(url: str, username: str, browser: Browser | None = None, *,
                 password: str = DEFAULT_PASSWORD, redirect_uri: str | None = None) -> str:
    """Drives the login (and consent, if shown) pages for an authorization URL that some
    other program produced, and returns the URL the provider finally redirects to (the
    client's redirect_uri with `code`, `state` and `iss`, or with `error`). That URL is
    not fetched. `url` must be on the provider (its authorization endpoint): the first
    redirect to another origin (or to `redirect_uri`) ends the walk. Pass the Browser
    the flow started with if it already holds cookies."""
    result = _drive(browser or Browser(), url, username, password, redirect_uri=redirect_uri)
    if not isinstance(result, str):
        raise IdpError(f"the flow ended on a page, not a redirect: {_parse(result.body).text}")
    return result


def device_login(uri: str, username: str, user_code: str | None = None,
                 browser: Browser | None = None, *, password: str = DEFAULT_PASSWORD) -> None:
    """Approves a device authorization as `username`: `uri` is the
    verification_uri_complete, or the verification_uri together with `user_code`."""
    result = _drive(browser or Browser(), uri, username, password, user_code=user_code)
    if isinstance(result, str):
        raise IdpError(f"the device flow ended in a redirect to {result}")
    page = _parse(result.body)
    if "Success" not in page.title:
        raise IdpError(f"the device flow did not end on the success page: {' '.join(page.text)}")


# --- endpoints -----------------------------------------------------------------------


def discover(issuer: str, browser: Browser | None = None) -> dict:
    """The provider's OpenID Connect discovery document."""
    resp = (browser or Browser()).request("GET", issuer.rstrip("/") + "/.well-known/openid-configuration")
    if resp.status != 200:
        raise IdpError(f"discovery: {resp.status} {resp.body[:300]}")
    return resp.json()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_claims(token: str) -> dict:
    """The payload of a JWT, decoded without checking its signature."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _post_token(endpoint: str, form: dict, client_id: str, client_secret: str | None,
                browser: Browser | None = None) -> dict:
    """A token-style POST with client authentication (client_secret_basic, or client_id in
    the body for a public client)."""
    headers = {"Accept": "application/json"}
    form = {k: v for k, v in form.items() if v is not None}
    if client_secret is None:
        form["client_id"] = client_id
    else:
        # RFC 6749 2.3.1: both parts form-encoded before the base64.
        pair = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(client_secret, safe='')}"
        basic = base64.b64encode(pair.encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    resp = (browser or Browser()).request("POST", endpoint, form=form, headers=headers)
    try:
        body = resp.json()
    except ValueError:
        raise IdpError(f"{endpoint}: {resp.status} {resp.body[:300]}") from None
    if resp.status != 200:
        raise IdpError(f"{endpoint}: {resp.status} {json.dumps(body)}")
    return body


def login(issuer: str, client_id: str, redirect_uri: str, username: str,
          resource: str | None = None, scope: str = "openid email groups",
          client_secret: str | None = None, *, password: str = DEFAULT_PASSWORD,
          browser: Browser | None = None, extra_params: dict | None = None) -> dict:
    """Authorization code flow with PKCE (S256) as `username`; returns the token response
    (access_token, token_type, expires_in, scope, id_token, refresh_token when issued).
    `resource` goes into both the authorization and the token request."""
    browser = browser or Browser()
    meta = discover(issuer, browser)
    verifier = _b64url(secrets.token_bytes(32))
    state = _b64url(secrets.token_bytes(16))
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    }
    if "openid" in scope.split():
        params["nonce"] = _b64url(secrets.token_bytes(16))
    if resource:
        params["resource"] = resource
    params.update(extra_params or {})
    url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode(params)
    final = follow_login(url, username, browser, password=password, redirect_uri=redirect_uri)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(final).query))
    if "error" in query:
        raise IdpError(f"authorization failed: {query}")
    if query.get("state") != state:
        raise IdpError(f"state mismatch in {final}")
    if query.get("iss") not in (None, meta["issuer"]):
        raise IdpError(f"iss mismatch in {final}")
    if "code" not in query:
        raise IdpError(f"no code in {final}")
    return _post_token(meta["token_endpoint"], {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        "resource": resource,
    }, client_id, client_secret, browser)


def refresh(issuer: str, client_id: str, refresh_token: str, client_secret: str | None = None,
            resource: str | None = None, scope: str | None = None) -> dict:
    """refresh_token grant; a public client's refresh token is rotated on each use."""
    return _post_token(discover(issuer)["token_endpoint"], {
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "resource": resource, "scope": scope,
    }, client_id, client_secret)


def client_credentials(issuer: str, client_id: str, client_secret: str,
                       resource: str | None = None, scope: str | None = None) -> dict:
    """client_credentials grant (no user: the token's sub is the client id)."""
    return _post_token(discover(issuer)["token_endpoint"], {
        "grant_type": "client_credentials", "resource": resource, "scope": scope,
    }, client_id, client_secret)


def register_client(issuer: str, metadata: dict) -> dict:
    """Dynamic client registration (open); returns the registered metadata, with
    client_id (and client_secret for a confidential client)."""
    endpoint = discover(issuer)["registration_endpoint"]
    resp = Browser().request("POST", endpoint, body=json.dumps(metadata).encode(),
                             headers={"Content-Type": "application/json"})
    if resp.status != 201:
        raise IdpError(f"registration: {resp.status} {resp.body[:500]}")
    return resp.json()


def device_authorize(issuer: str, client_id: str, scope: str = "openid email groups",
                     resource: str | None = None, client_secret: str | None = None) -> dict:
    """Device authorization request; returns device_code, user_code, verification_uri,
    verification_uri_complete, expires_in and interval."""
    return _post_token(discover(issuer)["device_authorization_endpoint"], {
        "scope": scope, "resource": resource,
    }, client_id, client_secret)


def poll_device_token(issuer: str, client_id: str, device_code: str,
                      client_secret: str | None = None, interval: float = 0.5,
                      timeout: float = 30.0) -> dict:
    """Polls the token endpoint with the device code until tokens (or an error other than
    authorization_pending / slow_down) come back."""
    endpoint = discover(issuer)["token_endpoint"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _post_token(endpoint, {"grant_type": DEVICE_GRANT, "device_code": device_code},
                               client_id, client_secret)
        except IdpError as err:
            if "authorization_pending" not in str(err) and "slow_down" not in str(err):
                raise
            if "slow_down" in str(err):
                interval += 5
        if time.monotonic() > deadline:
            raise IdpError("device flow: timed out waiting for approval")
        time.sleep(interval)


def device_flow(issuer: str, client_id: str, username: str, scope: str = "openid email groups",
                resource: str | None = None, client_secret: str | None = None, *,
                password: str = DEFAULT_PASSWORD) -> dict:
    """The whole device flow: authorize, approve as `username`, collect the tokens."""
    auth = device_authorize(issuer, client_id, scope, resource, client_secret)
    device_login(auth["verification_uri_complete"], username, password=password)
    # Polling right away is fine: approval is already done.
    return poll_device_token(issuer, client_id, auth["device_code"], client_secret, interval=0.2)


# --- CLI -----------------------------------------------------------------------------


def _decoded(tokens: dict) -> dict:
    out = dict(tokens)
    for name in ("access_token", "id_token"):
        if tokens.get(name, "").count(".") == 2:
            out[name + "_claims"] = jwt_claims(tokens[name])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, user=True):
        p.add_argument("--issuer", required=True)
        p.add_argument("--client", required=True)
        p.add_argument("--secret")
        p.add_argument("--resource")
        p.add_argument("--scope", default="openid email groups")
        p.add_argument("--decode", action="store_true")
        if user:
            p.add_argument("--user", required=True)
            p.add_argument("--password", default=DEFAULT_PASSWORD)

    p_token = sub.add_parser("token", help="authorization code flow with PKCE")
    common(p_token)
    p_token.add_argument("--redirect", required=True)
    common(sub.add_parser("device", help="device authorization flow"))
    p_cc = sub.add_parser("client-credentials", help="client_credentials grant")
    common(p_cc, user=False)
    p_cc.set_defaults(scope=None)
    p_follow = sub.add_parser("follow", help="sign in on an authorization URL")
    p_follow.add_argument("--user", required=True)
    p_follow.add_argument("--password", default=DEFAULT_PASSWORD)
    p_follow.add_argument("url")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "token":
            out = login(args.issuer, args.client, args.redirect, args.user, args.resource,
                        args.scope, args.secret, password=args.password)
        elif args.cmd == "device":
            out = device_flow(args.issuer, args.client, args.user, args.scope, args.resource,
                              args.secret, password=args.password)
        elif args.cmd == "client-credentials":
            out = client_credentials(args.issuer, args.client, args.secret, args.resource, args.scope)
        else:
            out = {"location": follow_login(args.url, args.user, password=args.password)}
        if getattr(args, "decode", False):
            out = _decoded(out)
    except (IdpError, OSError) as err:
        print(json.dumps({"error": str(err), "error_type": type(err).__name__}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
