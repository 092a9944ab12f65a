"""Decides a paused execution's approval in the operator console, in a real browser
(Debian's chromium, headless, through selenium and chromium-driver).

    python3 approvals_browser.py BASE APPROVER_KEY CALLER_KEY APPROVAL_ID EXECUTION_ID

Signs in as the approver, finds the call on the approvals page, opens it, and
approves it with a reason; then, signed in as the caller, follows the execution to
its end: its page shows the pause and the decision in its timeline. Prints one JSON line with what it saw; exits non-zero on a mismatch.
"""

import json
import sys
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from chromium import browser, expect

BASE, KEY, CALLER_KEY, APPROVAL, EXECUTION = sys.argv[1:6]


def sign_in(driver, key):
    driver.delete_all_cookies()
    driver.get(BASE + "/ui/login")
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "key")))
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    field.submit()
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "viewer")))


def main():
    seen = {}
    driver = browser()
    try:
        sign_in(driver, KEY)

        # The approvals page lists the call, and says this viewer may decide it.
        driver.find_element(By.LINK_TEXT, "Approvals").click()
        WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "pending-approvals")))
        row = driver.find_element(By.CSS_SELECTOR, f'#pending-approvals tr[data-approval="{APPROVAL}"]')
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        seen["pending_row"] = cells
        expect(cells[-1] == "yes", f"the approver may decide it: {cells}")

        # Its page: the call, its arguments, the buttons; approve with a reason.
        row.find_element(By.TAG_NAME, "a").click()
        WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "approve")))
        seen["tool"] = driver.find_element(By.ID, "approval-tool").text
        seen["args"] = json.loads(driver.find_element(By.ID, "approval-args").text)
        seen["reason"] = driver.find_element(By.ID, "approval-reason").text
        driver.find_element(By.ID, "decision-reason").send_keys("looks right")
        driver.find_element(By.ID, "approve").click()
        WebDriverWait(driver, 10).until(EC.text_to_be_present_in_element((By.ID, "approval-status"), "approved"))
        seen["status"] = driver.find_element(By.ID, "approval-status").text
        seen["decided"] = driver.find_element(By.ID, "approval-decided").text
        expect(not driver.find_elements(By.ID, "approve"), "a decided call has no buttons")

        # To the approver, the execution is another's: its page shows the approval only.
        driver.get(f"{BASE}/ui/executions/{EXECUTION}")
        seen["approver_sees"] = driver.find_element(By.ID, "execution-outcome").text

        # The caller follows it to its end; its page shows the pause and the decision.
        sign_in(driver, CALLER_KEY)
        outcome = ""
        for _ in range(100):
            driver.get(f"{BASE}/ui/executions/{EXECUTION}")
            outcome = driver.find_element(By.ID, "execution-outcome").text
            if outcome != "paused":
                break
            time.sleep(0.1)
        seen["outcome"] = outcome
        rows = driver.find_elements(By.CSS_SELECTOR, "#execution-approvals tbody tr")
        seen["execution_approvals"] = [[cell.text for cell in r.find_elements(By.TAG_NAME, "td")] for r in rows]
        seen["timeline"] = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#timeline text.lane")]
    finally:
        driver.quit()
    print(json.dumps(seen))


main()
