#!/usr/bin/env python3
"""Regenerate tests/search/catalog.json: the real `tools/list` output of public MCP servers.

Usage:  python3 tests/search/capture.py [SCRATCH_DIR] [--out PATH] [--timeout SECONDS]

SCRATCH_DIR (default /tmp/mcp-capture) receives everything that gets installed or
started: npm packages in SCRATCH_DIR/npm, one Python virtualenv per server in SCRATCH_DIR/venv,
server working files in SCRATCH_DIR/work and server stderr logs in SCRATCH_DIR/logs.
Nothing is installed system-wide and nothing but the output file is written elsewhere.

Every package is pinned to an exact version, and the dependencies they pull in are
resolved as of SNAPSHOT (npm --before, pip --uploaded-prior-to), so the same inputs
give the same bytes. Each server is started over stdio with dummy credentials and asked
for `initialize`, `notifications/initialized` and `tools/list` (following `nextCursor`)
by the small JSON-RPC client below; a server that fails, hangs or lists no tools is
skipped, and the reason is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Registry state that unpinned (transitive) dependencies are resolved against.
SNAPSHOT = "2026-11-29T00:00:00Z"
PIP_VERSION = "26.3"  # first pip line with --uploaded-prior-to is 26.0
PROTOCOL_VERSION = "2025-11-25"
DEFAULT_SCRATCH = "/tmp/mcp-capture"
DEFAULT_OUT = Path(__file__).resolve().parent / "catalog.json"


@dataclass
class Spec:
    """One server to capture.

    In `args` and `env` values, "{work}" is replaced by a per-server scratch directory
    (created empty); it never reaches the fixture.
    """

    name: str  # short identifier used in the fixture
    registry: str  # "npm" or "pypi"
    package: str
    version: str
    command: str  # executable installed by the package (node_modules/.bin or venv/bin)
    description: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pins: list[str] = field(default_factory=list)  # extra PyPI requirements for its virtualenv


SERVERS = [
    Spec("brave_search", "npm", "@modelcontextprotocol/server-brave-search", "0.6.2",
         "mcp-server-brave-search", "Web and local business search through the Brave Search API",
         env={"BRAVE_API_KEY": "dummy-brave-key"}),
    # The reference server the integration tests run (tests/mcp pins the same version).
    Spec("everything", "npm", "@modelcontextprotocol/server-everything", "2026.8.31",
         "mcp-server-everything", "MCP reference server: echo, arithmetic, sample images, resources, long operations"),
    Spec("fetch", "pypi", "mcp-server-fetch", "2026.10.24",
         "mcp-server-fetch", "Fetch a web page by URL and return it as markdown"),
    Spec("filesystem", "npm", "@modelcontextprotocol/server-filesystem", "2026.8.31",
         "mcp-server-filesystem", "Read, write, search and edit files inside allowed directories",
         args=["{work}"]),
    Spec("git", "pypi", "mcp-server-git", "2026.10.19",
         "mcp-server-git", "Inspect and change a local git repository: status, diff, log, commit, branches"),
    Spec("github", "npm", "@modelcontextprotocol/server-github", "2025.4.8",
         "mcp-server-github", "GitHub repositories, files, issues, pull requests and code search",
         env={"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_dummy000000000000000000000000000000"}),
    Spec("gitlab", "npm", "@modelcontextprotocol/server-gitlab", "2025.4.25",
         "mcp-server-gitlab", "GitLab projects, files, issues and merge requests",
         env={"GITLAB_PERSONAL_ACCESS_TOKEN": "glpat-dummy", "GITLAB_API_URL": "https://gitlab.com/api/v4"}),
    Spec("google_maps", "npm", "@modelcontextprotocol/server-google-maps", "0.6.2",
         "mcp-server-google-maps", "Geocoding, place search, directions and distances via Google Maps",
         env={"GOOGLE_MAPS_API_KEY": "dummy-maps-key"}),
    Spec("memory", "npm", "@modelcontextprotocol/server-memory", "2026.8.31",
         "mcp-server-memory", "Persistent knowledge graph of entities, relations and observations",
         env={"MEMORY_FILE_PATH": "{work}/memory.jsonl"}),
    Spec("notion", "npm", "@notionhq/notion-mcp-server", "2.5.2",
         "notion-mcp-server", "Notion workspace pages, databases, blocks, comments and users",
         env={"NOTION_TOKEN": "ntn_dummy"}),
    Spec("playwright", "npm", "@playwright/mcp", "0.0.83",
         "playwright-mcp", "Drive a web browser: navigate, click, type, snapshot and screenshot pages"),
    Spec("sequential_thinking", "npm", "@modelcontextprotocol/server-sequential-thinking", "2026.8.31",
         "mcp-server-sequential-thinking", "Structured step-by-step reasoning with revisions and branches"),
    Spec("slack", "npm", "@modelcontextprotocol/server-slack", "2025.4.25",
         "mcp-server-slack", "Slack channels, messages, threads, reactions and users",
         env={"SLACK_BOT_TOKEN": "xoxb-dummy", "SLACK_TEAM_ID": "T00000000"}),
    Spec("sqlite", "pypi", "mcp-server-sqlite", "2025.4.25",
         "mcp-server-sqlite", "Query and modify a SQLite database and record business insights",
         args=["--db-path", "{work}/test.db"],
         # It asks for mcp>=1.6.0 but does not run on the mcp 2.x API.
         pins=["mcp[cli]==1.30.0"]),
    Spec("time", "pypi", "mcp-server-time", "2026.10.19",
         "mcp-server-time", "Current time in a timezone and conversion between timezones",
         args=["--local-timezone", "UTC"]),
]

# The organisation-sized set (`--set large`): every server above and these. Several
# trackers, databases, browsers, monitoring and cloud services, so that the same words
# ("issue", "page", "query", "log", "project") mean different things on different servers.
LARGE_EXTRA = [
    Spec("airtable", "npm", "airtable-mcp-server", "1.14.0",
         "airtable-mcp-server", "Airtable bases, tables, fields and records",
         env={"AIRTABLE_API_KEY": "patDUMMY.0000"}),
    Spec("chrome_devtools", "npm", "chrome-devtools-mcp", "1.11.0",
         "chrome-devtools-mcp", "Chrome DevTools: drive and debug a browser page, network requests, console, performance traces",
         args=["--headless", "--isolated"]),
    Spec("context7", "npm", "@upstash/context7-mcp", "4.1.1",
         "context7-mcp", "Up-to-date documentation and code examples for software libraries",
         args=["--transport", "stdio"]),
    Spec("datadog", "npm", "@winor30/mcp-server-datadog", "1.8.0",
         "mcp-server-datadog", "Datadog monitoring: incidents, monitors, metrics, logs, traces, dashboards and hosts",
         env={"DATADOG_API_KEY": "dummy-dd-api-key", "DATADOG_APP_KEY": "dummy-dd-app-key"}),
    Spec("elasticsearch", "npm", "@elastic/mcp-server-elasticsearch", "0.3.1",
         "mcp-server-elasticsearch", "Elasticsearch indices, mappings and search queries",
         env={"ES_URL": "http://127.0.0.1:9", "ES_API_KEY": "dummy-es-key"}),
    Spec("excel", "npm", "@negokaz/excel-mcp-server", "0.12.0",
         "excel-mcp-server", "Read and write Excel workbooks: sheets, cell ranges, formulas, tables and formats"),
    Spec("figma", "npm", "figma-developer-mcp", "0.13.2",
         "figma-developer-mcp", "Figma design files: layout and styles of frames, and image downloads",
         args=["--stdio"],
         # Its download tool's description names the image directory: a fixed one, not the scratch.
         env={"FIGMA_API_KEY": "figd_dummy", "IMAGE_DIR": "/srv/design/images", "FRAMELINK_TELEMETRY": "off"}),
    Spec("hubspot", "npm", "@hubspot/mcp-server", "0.4.0",
         "mcp-hubspot", "HubSpot CRM: contacts, companies, deals, tickets, associations and engagements",
         env={"PRIVATE_APP_ACCESS_TOKEN": "pat-na1-dummy"}),
    Spec("kubernetes", "npm", "mcp-server-kubernetes", "4.1.7",
         "mcp-server-kubernetes", "Kubernetes clusters: pods, deployments, services, namespaces, logs, Helm charts and kubectl"),
    Spec("linear", "npm", "@tacticlaunch/mcp-linear", "1.4.3",
         "mcp-linear", "Linear issue tracker: issues, projects, cycles, teams and comments",
         env={"LINEAR_API_TOKEN": "lin_api_dummy"}),
    Spec("mongodb", "npm", "mongodb-mcp-server", "3.0.4",
         "mongodb-mcp-server", "MongoDB databases and collections: find, aggregate, insert, update, indexes; MongoDB Atlas clusters",
         env={"MDB_MCP_TELEMETRY": "disabled", "DO_NOT_TRACK": "1",
              "MDB_MCP_API_CLIENT_ID": "dummy-client-id", "MDB_MCP_API_CLIENT_SECRET": "dummy-client-secret"}),
    Spec("sentry", "npm", "@sentry/mcp-server", "0.39.0",
         "sentry-mcp", "Sentry error tracking: issues, events, stack traces, releases and projects",
         args=["--access-token=sntrys_dummy"]),
    Spec("shortcut", "npm", "@shortcut/mcp", "0.25.0",
         "mcp-server-shortcut", "Shortcut project tracker: stories, epics, iterations, objectives and teams",
         env={"SHORTCUT_API_TOKEN": "dummy-shortcut-token"}),
    Spec("atlassian", "pypi", "mcp-atlassian", "0.23.1",
         "mcp-atlassian", "Jira issue tracker (issues, sprints, boards) and Confluence wiki (pages, spaces)",
         env={"JIRA_URL": "https://example.atlassian.net", "JIRA_USERNAME": "bot@example.com",
              "JIRA_API_TOKEN": "dummy-jira-token", "CONFLUENCE_URL": "https://example.atlassian.net/wiki",
              "CONFLUENCE_USERNAME": "bot@example.com", "CONFLUENCE_API_TOKEN": "dummy-confluence-token"}),
]

# Tried and left out:
#   @modelcontextprotocol/server-postgres@0.6.2       a single generic `query` tool; sqlite covers SQL
#   @modelcontextprotocol/server-puppeteer@2025.5.12  a subset of what playwright offers
#   @modelcontextprotocol/server-redis@2025.4.25      exits before `initialize` unless a live Redis answers
#   @heroku/mcp-server@1.2.8                           exits at start: imports an SDK path its package lacks
#   @stripe/mcp@0.3.3                                  a proxy to mcp.stripe.com, unreachable offline
#   @supabase/mcp-server-supabase@0.13.0               `tools/list` asks Supabase's API first ("fetch failed")

# Environment every server starts with (plus its own Spec.env); nothing else is inherited
# but PATH, so the capture does not depend on who runs it.
BASE_ENV = {
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "NODE_NO_WARNINGS": "1",
    "PUPPETEER_SKIP_DOWNLOAD": "1",
    "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    # Set order in Python servers' schemas (mcp-atlassian's default field lists).
    "PYTHONHASHSEED": "0",
}


# Set from --node-dir.
NODE_DIR: str | None = None


class Skip(Exception):
    """A server could not be captured; the message says why."""


# ---------------------------------------------------------------- installing


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:])
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")


def install_npm(scratch: Path, specs: list[Spec]) -> dict[str, str]:
    """Install the npm servers; return {spec name: error} for those that failed."""
    specs = [s for s in specs if s.registry == "npm"]
    if not specs:
        return {}
    root = scratch / "npm"
    shutil.rmtree(root, ignore_errors=True)  # no lockfile from an earlier run steers resolution
    root.mkdir(parents=True)
    (root / "package.json").write_text('{"private": true}\n')
    env = dict(os.environ, **BASE_ENV)
    base = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
            "--save-exact", f"--before={SNAPSHOT}"]
    try:
        run(base + [f"{s.package}@{s.version}" for s in specs], cwd=root, env=env)
        return {}
    except RuntimeError:
        pass
    failed = {}  # one package broke the batch: install one at a time to find it
    for s in specs:
        try:
            run(base + [f"{s.package}@{s.version}"], cwd=root, env=env)
        except RuntimeError as e:
            failed[s.name] = f"npm install failed: {e}"
    return failed


def install_pypi(scratch: Path, specs: list[Spec]) -> dict[str, str]:
    """Install each PyPI server into its own virtualenv; return {spec name: error} for failures."""
    failed = {}
    for s in specs:
        if s.registry != "pypi":
            continue
        venv = scratch / "venv" / s.name
        pip = venv / "bin" / "pip"
        try:
            if not pip.exists():
                run([sys.executable, "-m", "venv", str(venv)])
            run([str(pip), "install", "-q", "--disable-pip-version-check", f"pip=={PIP_VERSION}"])
            run([str(pip), "install", "-q", "--disable-pip-version-check",
                 f"--uploaded-prior-to={SNAPSHOT}", f"{s.package}=={s.version}", *s.pins])
        except RuntimeError as e:
            failed[s.name] = f"pip install failed: {e}"
    return failed


def executable(scratch: Path, spec: Spec) -> Path:
    if spec.registry == "npm":
        return scratch / "npm" / "node_modules" / ".bin" / spec.command
    return scratch / "venv" / spec.name / "bin" / spec.command


# ---------------------------------------------------------------- talking to a server


class StdioClient:
    """Minimal MCP client: newline-delimited JSON-RPC over a child's stdin/stdout."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, cwd=cwd,
                                     start_new_session=True)
        self._lines: queue.Queue = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of output

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise Skip(f"server exited (code {self.proc.poll()}) before reading a request")

    def notify(self, method: str, params: dict | None = None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self._send(message)

    def request(self, method: str, params: dict, deadline: float) -> dict:
        self._next_id += 1
        rid = self._next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Skip(f"timed out waiting for the {method} response")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise Skip(f"server exited (code {code}) before answering {method}")
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a log line printed to stdout
            if not isinstance(message, dict):
                continue
            if "method" in message:
                if "id" in message:  # a request from the server (ping, roots/list, ...)
                    reply = {"jsonrpc": "2.0", "id": message["id"]}
                    if message["method"] == "ping":
                        reply["result"] = {}
                    else:
                        reply["error"] = {"code": -32601, "message": "Method not found"}
                    self._send(reply)
                continue  # notifications (logging, list_changed, ...) are ignored
            if message.get("id") != rid:
                continue
            if "error" in message:
                raise Skip(f"{method} returned error {json.dumps(message['error'])[:300]}")
            return message.get("result") or {}

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log.close()


def list_tools(scratch: Path, spec: Spec, timeout: float) -> list[dict]:
    """Start one server, list its tools, stop it."""
    exe = executable(scratch, spec)
    if not exe.exists():
        raise Skip(f"{exe.name} is not installed")
    work = scratch / "work" / spec.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (scratch / "logs").mkdir(exist_ok=True)
    fill = lambda s: s.replace("{work}", str(work))
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if NODE_DIR:
        path = f"{NODE_DIR}:{path}"
    env = {"PATH": path, "HOME": str(work), **BASE_ENV,
           **{k: fill(v) for k, v in spec.env.items()}}
    client = StdioClient([str(exe)] + [fill(a) for a in spec.args], env, work,
                         scratch / "logs" / f"{spec.name}.log")
    try:
        deadline = time.monotonic() + timeout
        init = client.request("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "sandgate-catalog-capture", "version": "1.0.0"},
        }, deadline)
        if "capabilities" in init and "tools" not in init["capabilities"]:
            raise Skip("server does not offer the tools capability")
        client.notify("notifications/initialized")
        tools: list[dict] = []
        params: dict = {}
        seen_cursors = set()
        while True:
            page = client.request("tools/list", params, deadline)
            tools.extend(page.get("tools") or [])
            cursor = page.get("nextCursor")
            if not cursor:
                break
            if cursor in seen_cursors:
                raise Skip("tools/list pagination repeats a cursor")
            seen_cursors.add(cursor)
            params = {"cursor": cursor}
        if not tools:
            raise Skip("tools/list returned no tools")
        return tools
    finally:
        client.close()


# ---------------------------------------------------------------- the fixture


def check_no_machine_paths(text: str, scratch: Path) -> None:
    for needle in {str(scratch), str(scratch.resolve()), str(Path.home())}:
        if needle and needle != "/" and needle in text:
            raise SystemExit(f"refusing to write the fixture: it contains the path {needle!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scratch", nargs="?", default=DEFAULT_SCRATCH,
                        help=f"scratch directory for installs and server files (default {DEFAULT_SCRATCH})")
    parser.add_argument("--out", help=f"fixture to write (default {DEFAULT_OUT}, or large/catalog.json beside it)")
    parser.add_argument("--set", choices=["small", "large"], default="small",
                        help="small: the reference servers (catalog.json); large: those and LARGE_EXTRA "
                             "(large/catalog.json)")
    parser.add_argument("--node-dir", help="directory of the `node` the servers run on, put first on their PATH "
                                           "(some large-set servers need Node 22 or newer)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a server gets from start to its last tools/list page")
    opts = parser.parse_args()
    global NODE_DIR
    NODE_DIR = opts.node_dir
    scratch = Path(opts.scratch).absolute()
    scratch.mkdir(parents=True, exist_ok=True)

    servers = SERVERS + (LARGE_EXTRA if opts.set == "large" else [])
    out = Path(opts.out) if opts.out else (DEFAULT_OUT if opts.set == "small" else DEFAULT_OUT.parent / "large" / "catalog.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped = {}
    skipped.update(install_npm(scratch, servers))
    skipped.update(install_pypi(scratch, servers))

    captured = []
    for spec in sorted(servers, key=lambda s: s.name):
        if spec.name in skipped:
            continue
        try:
            tools = list_tools(scratch, spec, opts.timeout)
        except Skip:
            try:  # once more: a start can fail on a busy machine
                tools = list_tools(scratch, spec, opts.timeout)
            except Skip as e:
                skipped[spec.name] = str(e)
                continue
        captured.append({
            "name": spec.name,
            "package": f"{spec.package}@{spec.version}",
            "description": spec.description,
            "tools": tools,
        })

    for server in captured:
        try:
            check_no_machine_paths(json.dumps(server, ensure_ascii=False), scratch)
        except SystemExit as e:
            raise SystemExit(f"{server['name']}: {e}")
    text = json.dumps({"servers": captured}, indent=2, ensure_ascii=False) + "\n"
    check_no_machine_paths(text, scratch)
    out.write_text(text, encoding="utf-8")

    print(f"\ncaptured {len(captured)} servers, {sum(len(s['tools']) for s in captured)} tools -> {out}")
    for s in captured:
        print(f"  {s['name']:<22} {s['package']:<52} {len(s['tools']):>3} tools")
    if skipped:
        print(f"skipped {len(skipped)} servers (logs in {scratch / 'logs'}):")
        for name in sorted(skipped):
            print(f"  {name:<22} {skipped[name]}")
    return 0 if captured else 1


if __name__ == "__main__":
    sys.exit(main())
