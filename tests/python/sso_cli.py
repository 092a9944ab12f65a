"""Runs `sandgate login` as a person would, signing in at the identity provider's own
pages when the command shows where.

    python3 sso_cli.py SANDGATE SERVER USER [--browser]

SANDGATE is the sandgate binary, SERVER its server's URL. Without --browser the
command uses the device authorization grant: this script opens the page it prints
and approves the code as USER. With --browser it uses a loopback redirect: this
script signs in on the URL it prints and follows the provider's redirect back to the
command's loopback listener. SANDGATE_CREDENTIALS passes through. Prints one JSON
line: {"status": EXIT_STATUS, "stderr": TEXT, "url": THE_URL_SHOWN}.
"""

import json
import subprocess
import sys
import urllib.request

import idp_flows


def main():
    binary, server, user = sys.argv[1:4]
    browser = "--browser" in sys.argv[4:]
    command = [binary, "login", "--server", server] + (["--browser"] if browser else [])
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines, url = [], None
    for line in process.stderr:
        lines.append(line)
        if url is None and line.startswith("  http"):
            url = line.strip()
            if browser:
                location = idp_flows.follow_login(url, user)
                with urllib.request.urlopen(location, timeout=10) as response:
                    page = response.read().decode()
                if "Signed in" not in page:
                    raise SystemExit(f"the loopback page says: {page}")
            else:
                idp_flows.device_login(url, user)
    status = process.wait(timeout=60)
    print(json.dumps({"status": status, "stderr": "".join(lines), "url": url}))


if __name__ == "__main__":
    main()
