"""Signs in to sandgate's console through the identity provider in a real browser
(Debian's chromium, headless, through selenium and chromium-driver): the console's
"Sign in with SSO", the provider's own login page, back to the console.

    python3 sso_browser.py BASE USER

Checks that the console then shows USER (and their team); that the person issues
themselves a personal key on the keys page, which then calls the API as them, and
revokes it there; that signing out ends the sign-in on the server (the old cookie,
replayed, is sent to sign in again). Prints one JSON line:
{"viewer": TEXT, "key_me": {...}, "revoked_status": STATUS, "cookie_after_sign_out": STATUS}.
"""

import json
import sys
import urllib.error
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from chromium import browser, expect, gone
from selenium.webdriver.support.ui import WebDriverWait

BASE, USER = sys.argv[1:3]


def page_status(path, cookie):
    """The status of `path` fetched with only `cookie`, not following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(BASE + path, headers={"cookie": cookie})
    try:
        with opener.open(request) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def api_status(path, key):
    """The status and JSON body of GET `path` with `key` as a bearer token."""
    request = urllib.request.Request(BASE + path, headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def personal_key(driver, wait):
    """Issues a key on the keys page, uses it, and revokes it there."""
    driver.get(BASE + "/ui/keys")
    wait.until(EC.presence_of_element_located((By.ID, "new-key")))
    driver.find_element(By.ID, "key-name").send_keys("console-made")
    driver.find_element(By.CSS_SELECTOR, "#new-key button[type=submit]").click()
    wait.until(EC.visibility_of_element_located((By.ID, "new-key-secret")))
    secret = driver.find_element(By.ID, "new-key-secret").get_attribute("value")
    expect(secret.startswith("sg_"), f"the new key is shown once: {secret!r}")
    status, me = api_status("/v1/me", secret)
    expect(status == 200 and me.get("via") == "personal_key", f"the key calls the API: {status} {me}")
    driver.get(BASE + "/ui/keys")
    row = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#my-keys tr[data-key="console-made"]')))
    expect(secret not in driver.page_source, "the secret is never shown again")
    row.find_element(By.CSS_SELECTOR, "button.revoke-key").click()
    wait.until(gone(row))
    wait.until(EC.presence_of_element_located((By.ID, "my-keys")))
    expect(not driver.find_elements(By.CSS_SELECTOR, '#my-keys tr[data-key="console-made"]'), "the key is gone")
    revoked, _ = api_status("/v1/me", secret)
    return me, revoked


def main():
    driver = browser()
    wait = WebDriverWait(driver, 15)
    try:
        driver.get(BASE + "/ui")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#sso a")))
        expect(driver.current_url.endswith("/ui/login"), "an anonymous visit goes to the sign-in page")
        expect(driver.find_elements(By.ID, "key"), "key sign-in stays beside SSO")
        driver.find_element(By.CSS_SELECTOR, "#sso a").click()
        # The provider's own login page.
        wait.until(EC.presence_of_element_located((By.NAME, "login")))
        expect(not driver.current_url.startswith(BASE), "the login page is the provider's")
        driver.find_element(By.NAME, "login").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys("any password")
        driver.find_element(By.NAME, "password").submit()
        # Back at the console, signed in.
        wait.until(EC.presence_of_element_located((By.ID, "viewer")))
        expect(driver.current_url.rstrip("/").endswith("/ui"), f"landed on the console: {driver.current_url}")
        viewer = driver.find_element(By.ID, "viewer").text
        expect(USER in viewer, f"the console names the person: {viewer}")
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies() if c["name"] == "sandgate_console")
        expect(cookie, "a console cookie was set")
        expect(page_status("/ui/usage", cookie) == 200, "the cookie signs its holder in")
        key_me, revoked = personal_key(driver, wait)
        # Sign out: the sign-in ends on the server, so the same cookie no longer works.
        driver.find_element(By.ID, "sign-out").click()
        wait.until(EC.presence_of_element_located((By.ID, "key")))
        after = page_status("/ui/usage", cookie)
        expect(after in (302, 303, 307), f"a signed-out cookie is sent to sign in: {after}")
        print(json.dumps({"viewer": viewer, "key_me": key_me, "revoked_status": revoked,
                          "cookie_after_sign_out": after}))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
