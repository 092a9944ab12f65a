"""Debian's chromium, headless, through selenium and chromium-driver, for the console's
browser scripts (console_browser.py, sso_browser.py)."""

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def gone(element):
    """A wait condition: `element` has left the page. Selenium's `staleness_of` expects
    a stale-element error, but while the page is being replaced chromium-driver can
    answer "Node with given id does not belong to the document" instead, which says
    the same."""

    def detached(_driver):
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise

    return detached
