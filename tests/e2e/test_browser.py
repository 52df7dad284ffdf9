"""A real headless Chromium (Debian's chromium + chromium-driver, driven by selenium) against
a running pooler: Swagger UI loads from the pooler alone (no CDN), takes a token and shows
the API; the admin login page shows its form; the live pools page shows a pool. Screenshots
go to the test's tmp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, PoolerFactory
from tests.support.pg import PgCluster
from tests.support.pooler import PoolerProcess, run_manage, tenant_doc, user_doc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_SECRET = "browser-test-api-jwt-secret-0123456789abcdef"
ADMIN = ("browseradmin", "Br0wser-admin-pass")
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1280,1000",
)
WAIT = 20  # seconds for a page element to appear


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def pooler(pooler_factory: PoolerFactory, pg: PgCluster) -> PoolerProcess:
    users = [user_doc("app1user", PASSWORDS["app1user"], pool_size=2)]
    doc = {"tenants": [tenant_doc("web1", "app1", pg.port, users)]}
    process = pooler_factory(doc, env={"API_JWT_SECRET": API_SECRET})
    env = {**process.env, "DJANGO_SUPERUSER_PASSWORD": ADMIN[1]}
    run_manage(["createsuperuser", "--noinput", "--username", ADMIN[0], "--email", "b@x.io"], env)
    return process


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chromium = _binary("chromium", "chromium-browser")
    chromedriver = _binary("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


def _wait_for(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    condition = expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css))
    return WebDriverWait(driver, WAIT).until(condition)


def _resources(driver: Any) -> list[str]:
    return list(driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    ))  # fmt: skip


def _shot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot for {name}"
    assert path.stat().st_size > 5000  # a rendered page, not an empty image
    return path


def test_swagger_ui_works_offline_with_a_token(
    driver: Any, pooler: PoolerProcess, tmp_path: Path
) -> None:
    base = f"http://{pooler.host}:{pooler.http_port}"
    token = run_manage(["minttoken", "--ttl", "600"], pooler.env).stdout.strip()
    driver.get(f"{base}/swaggerui")
    status = _wait_for(driver, "#gv-token-status")
    assert "no token yet" in status.text
    _shot(driver, tmp_path, "swaggerui-no-token")
    driver.find_element("css selector", "#gv-token-input").send_keys(token)
    driver.find_element("css selector", "#gv-token-use").click()
    title = _wait_for(driver, ".swagger-ui .info .title")
    assert "Greenvisor API" in title.text
    operations = _wait_for(driver, ".swagger-ui .opblock-summary-path")
    assert operations.text.startswith("/api/")
    page = driver.find_element("css selector", "body").text
    for path in ("/api/tenants/{external_id}", "/api/tenants/{external_id}/terminate"):
        assert path in page
    assert "a token is set" in driver.find_element("css selector", "#gv-token-status").text
    _shot(driver, tmp_path, "swaggerui")
    outside = [url for url in _resources(driver) if not url.startswith(base)]
    assert outside == [], f"Swagger UI fetched from outside the pooler: {outside}"
    assert any(url.endswith("swagger-ui-bundle.js") for url in _resources(driver))
    driver.find_element("css selector", "#gv-token-forget").click()
    assert "no token yet" in _wait_for(driver, "#gv-token-status").text


def test_admin_login_page_and_live_pools(
    driver: Any, pooler: PoolerProcess, tmp_path: Path
) -> None:
    base = f"http://{pooler.host}:{pooler.http_port}"
    driver.get(f"{base}/admin/login/")
    form = _wait_for(driver, "#login-form")
    assert form.find_element("name", "username").is_displayed()
    assert form.find_element("name", "password").get_attribute("type") == "password"
    assert "Django administration" in driver.title or "Log in" in driver.title
    css = driver.execute_script(
        "return getComputedStyle(document.querySelector('#header')).backgroundColor"
    )
    assert css not in ("", "rgba(0, 0, 0, 0)"), "the admin's CSS did not load"
    _shot(driver, tmp_path, "admin-login")

    form.find_element("name", "username").send_keys(ADMIN[0])
    form.find_element("name", "password").send_keys(ADMIN[1])
    form.find_element("css selector", "input[type=submit]").click()
    _wait_for(driver, "#content-main")
    conn = pooler.connect("app1user.web1", PASSWORDS["app1user"], "app1")
    try:
        conn.cursor().execute("SELECT 1")
        driver.get(f"{base}/admin/tenants/tenant/")
        _wait_for(driver, "#result_list tbody th a").click()  # web1's change page
        _wait_for(driver, ".field-pools_link a").click()
        table = _wait_for(driver, "#live-pools")
        assert "CL_ACTIVE" in table.text.upper() and "app1user" in table.text
        assert "1 client connection on this node" in driver.find_element("tag name", "body").text
        _shot(driver, tmp_path, "admin-live-pools")
    finally:
        conn.close()
