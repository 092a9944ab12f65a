"""Drives the operator console in a real browser (Debian's chromium, headless, through
selenium and chromium-driver) against a running sandgate with a workload already
recorded, and checks it against the API.

    python3 console_browser.py BASE ADMIN_KEY MEMBER_KEY MEMBER_USER SCREENSHOT_DIR

- signs in as the admin, visits every page, checks that every number the usage
  page shows equals `GET /v1/usage` (by user, team and model), that the overview
  and executions pages agree with the ledger, and uses the explain form;
- signs in as the member and checks that no other user's rows are shown, and that
  another user's execution is not found;
- saves a screenshot of each page (1280x800) into SCREENSHOT_DIR.

Prints one JSON line with what it saw; exits non-zero on the first mismatch.
"""

import json
import os
import sys
import time
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from chromium import browser, expect
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, ADMIN_KEY, MEMBER_KEY, MEMBER_USER, SHOTS = sys.argv[1:6]


def api(path, key):
    request = urllib.request.Request(BASE + path, headers={"authorization": "Bearer " + key})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def sign_in(driver, key):
    driver.get(BASE + "/ui")
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "key")))
    expect(driver.current_url.endswith("/ui/login"), "an anonymous visit goes to the sign-in page")
    field = driver.find_element(By.ID, "key")
    label = driver.find_element(By.CSS_SELECTOR, "label[for=key]")
    expect(label.text == "API key", "the key field is labelled")
    field.send_keys(key)
    field.submit()
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "viewer")))
    cookies = {c["name"]: c for c in driver.get_cookies()}
    cookie = cookies.get("sandgate_console")
    expect(cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", f"the session cookie: {cookies}")
    expect(key not in cookie["value"], "the cookie does not hold the key")


def shot(driver, name):
    driver.save_screenshot(os.path.join(SHOTS, name + ".png"))


def table(driver, table_id):
    """The rows of a table: {group: {field: value}} from the cells' data attributes."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr"):
        group = row.get_attribute("data-group")
        if group is None:
            continue
        cells = row.find_elements(By.CSS_SELECTOR, "td[data-field]")
        rows[group] = {cell.get_attribute("data-field"): cell.text for cell in cells}
    return rows


def check_usage(driver, key, group_by):
    driver.get(f"{BASE}/ui/usage?group_by={group_by}")
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "usage")))
    shown = table(driver, "usage")
    report = api(f"/v1/usage?group_by={group_by}", key)
    expected = {row["group"]: row for row in report["rows"]}
    expect(set(shown) - {"total"} == set(expected), f"usage by {group_by}: groups {sorted(shown)} vs {sorted(expected)}")
    for group, row in list(expected.items()) + [("total", report["totals"])]:
        for field in ("executions", "model_calls", "input_tokens", "output_tokens", "fuel", "wall_ms", "host_calls"):
            expect(shown[group][field] == str(row[field]), f"usage by {group_by}, {group}.{field}: {shown[group][field]} vs {row[field]}")
        expect(shown[group]["cost_usd"] == f"{row['cost_usd']:.6f}", f"usage by {group_by}, {group} cost: {shown[group]['cost_usd']} vs {row['cost_usd']}")
    return shown


def main():
    os.makedirs(SHOTS, exist_ok=True)
    seen = {}
    driver = browser()
    try:
        sign_in(driver, ADMIN_KEY)
        # Overview: the last hour's executions, as the ledger has them.
        WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "pulse-executions")))
        seen["overview_executions"] = int(driver.find_element(By.ID, "pulse-executions").text)
        today = api("/v1/usage?group_by=team", ADMIN_KEY)
        expect(seen["overview_executions"] == today["totals"]["executions"], f"overview executions {seen['overview_executions']} vs {today['totals']['executions']}")
        spend = {row.get_attribute("innerText").split("\t")[0]: row for row in driver.find_elements(By.CSS_SELECTOR, "#spend tbody tr")}
        for row in today["rows"]:
            cells = spend[row["group"]].find_elements(By.CSS_SELECTOR, "td[data-field=cost_usd]")
            expect(cells[0].text == f"{row['cost_usd']:.6f}", f"spend of {row['group']}")
        # Live updates arrive over server-sent events.
        WebDriverWait(driver, 10).until(lambda d: "(live)" in d.find_element(By.ID, "live-at").text)
        shot(driver, "overview")

        seen["usage_by_user"] = check_usage(driver, ADMIN_KEY, "user")
        check_usage(driver, ADMIN_KEY, "model")
        check_usage(driver, ADMIN_KEY, "team")
        Select(driver.find_element(By.ID, "group_by")).select_by_value("user")
        driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
        WebDriverWait(driver, 10).until(EC.url_contains("group_by=user"))
        shot(driver, "usage")
        csv_link = driver.find_element(By.ID, "csv").get_attribute("href")
        expect("group_by=user" in csv_link, "the CSV link keeps the filters")

        # Models: the same totals by model and tier as the API, fallbacks, breakers.
        driver.get(BASE + "/ui/models")
        for table_id, group_by in (("models", "model"), ("tiers", "tier")):
            shown = table(driver, table_id)
            report = api(f"/v1/usage?group_by={group_by}", ADMIN_KEY)
            expect(set(shown) == {row["group"] for row in report["rows"]}, f"{table_id}: {sorted(shown)}")
            for row in report["rows"]:
                got = shown[row["group"]]
                expect(got["model_calls"] == str(row["model_calls"]), f"{table_id} {row['group']} calls")
                expect(got["input_tokens"] == str(row["input_tokens"]), f"{table_id} {row['group']} input")
                expect(got["output_tokens"] == str(row["output_tokens"]), f"{table_id} {row['group']} output")
                expect(got["cost_usd"] == f"{row['cost_usd']:.6f}", f"{table_id} {row['group']} cost")
        expect(driver.find_elements(By.CSS_SELECTOR, "#circuits td[data-field=circuit]"), "the breakers are listed")
        shot(driver, "models")

        # Tools: each upstream server's status, tools and calls; every host call.
        driver.get(BASE + "/ui/tools")
        seen["tools"] = table(driver, "servers")
        for row in driver.find_elements(By.CSS_SELECTOR, "#servers tbody tr[data-group]"):
            seen["tools"][row.get_attribute("data-group")]["status"] = row.find_element(By.CSS_SELECTOR, "td[data-field=status]").text
        seen["calls"] = table(driver, "calls-by-name")
        shot(driver, "tools")

        # Budgets: each line in force, its spend as the ledger has it today.
        driver.get(BASE + "/ui/budgets")
        seen["budgets"] = table(driver, "budgets")
        day = time.strftime("%Y-%m-%d", time.gmtime())
        teams = {row["group"]: row for row in api(f"/v1/usage?group_by=team&since={day}", ADMIN_KEY)["rows"]}
        expect(seen["budgets"]["team labs daily"]["spent_usd"] == f"{teams['labs']['cost_usd']:.6f}", "the team budget's spend")
        shot(driver, "budgets")

        # Sessions: live ones, with their owners and sizes.
        driver.get(BASE + "/ui/sessions")
        seen["sessions"] = [row.find_element(By.CSS_SELECTOR, "code").text for row in driver.find_elements(By.CSS_SELECTOR, "#sessions tbody tr[data-user]")]
        shot(driver, "sessions")

        # Executions: every user's, newest first; one opens as a timeline.
        driver.get(BASE + "/ui/executions")
        rows = driver.find_elements(By.CSS_SELECTOR, "#executions tbody tr[data-user]")
        users = {row.get_attribute("data-user") for row in rows}
        expect(MEMBER_USER in users and len(users) >= 2, f"the admin sees everyone's executions: {users}")
        seen["executions_listed"] = len(rows)
        shot(driver, "executions")
        with_model = None
        for row in rows:
            link = row.find_element(By.CSS_SELECTOR, "a")
            calls = row.find_element(By.CSS_SELECTOR, "td[data-field=host_calls]").text
            if row.get_attribute("data-user") != MEMBER_USER and calls != "0":
                with_model = link.get_attribute("href")
                break
        driver.get(with_model)
        WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "timeline")))
        seen["execution_outcome"] = driver.find_element(By.ID, "execution-outcome").text
        seen["execution_calls"] = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr")]
        seen["execution_models"] = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#model-calls tbody tr")]
        seen["execution_cost"] = driver.find_element(By.ID, "execution-cost").text
        seen["execution_logs"] = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#logs tbody tr")]
        shot(driver, "execution")
        # The member's own execution id, to try as the member later.
        driver.get(BASE + "/ui/executions?user=" + MEMBER_USER)
        member_rows = driver.find_elements(By.CSS_SELECTOR, "#executions tbody tr[data-user]")
        expect(member_rows and all(r.get_attribute("data-user") == MEMBER_USER for r in member_rows), "the user filter")
        admin_only = with_model

        # Policies: the explain form, by keyboard.
        driver.get(BASE + "/ui/policies")
        driver.find_element(By.ID, "explain-user").send_keys(MEMBER_USER)
        driver.find_element(By.ID, "explain-team").send_keys("labs")
        Select(driver.find_element(By.ID, "explain-what")).select_by_value("tool")
        name = driver.find_element(By.ID, "explain-name")
        name.send_keys("test.fail")
        name.submit()
        WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "decision")))
        seen["explain"] = driver.find_element(By.CSS_SELECTOR, "#decision h2").text
        seen["explain_rule"] = driver.find_element(By.ID, "decision").text
        shot(driver, "policies")

        # Sign out: the console asks for a key again.
        driver.find_element(By.ID, "sign-out").click()
        WebDriverWait(driver, 10).until(EC.url_contains("/ui/login"))
        driver.get(BASE + "/ui/usage")
        expect(driver.current_url.endswith("/ui/login"), "signed out")

        # A member sees only their own rows.
        sign_in(driver, MEMBER_KEY)
        shown = check_usage(driver, MEMBER_KEY, "user")
        expect(set(shown) == {MEMBER_USER, "total"}, f"the member's usage shows only them: {sorted(shown)}")
        driver.get(BASE + "/ui/executions")
        users = {row.get_attribute("data-user") for row in driver.find_elements(By.CSS_SELECTOR, "#executions tbody tr[data-user]")}
        expect(users == {MEMBER_USER}, f"the member's executions: {users}")
        driver.get(BASE + "/ui/executions?user=someone-else")
        users = {row.get_attribute("data-user") for row in driver.find_elements(By.CSS_SELECTOR, "#executions tbody tr[data-user]")}
        expect(users <= {MEMBER_USER}, f"a user filter cannot widen a member's view: {users}")
        driver.get(admin_only)
        expect("not found" in driver.page_source.lower() or "no execution" in driver.page_source.lower(), "another user's execution is not found")
        driver.get(BASE + "/ui/policies")
        expect(not driver.find_elements(By.ID, "explain-user"), "a member explains only for themselves")
        driver.get(BASE + "/ui/sessions")
        expect(not driver.find_elements(By.CSS_SELECTOR, "#sessions tbody tr[data-user]"), "the member sees no one else's sessions")
        driver.get(BASE + "/ui/budgets")
        scopes = set(table(driver, "budgets"))
        expect(scopes == {"user bob daily", "team labs daily"}, f"the member's budgets: {scopes}")
        # Narrow window: still usable.
        driver.set_window_size(420, 800)
        driver.get(BASE + "/ui/usage")
        expect(driver.find_element(By.ID, "group_by").is_displayed(), "controls stay reachable on a narrow window")
        shot(driver, "usage-narrow")
    finally:
        driver.quit()
    print(json.dumps(seen, default=str))


if __name__ == "__main__":
    main()
