"""The interactive docs of every service, in a real browser: Swagger UI renders the service's
OpenAPI 3.1 from locally served assets, lists every operation, and "Try it out" sends real
requests from the page (a digit to classify, GET /v1/model everywhere) and shows the answers."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page

from tests.browser import chromium
from tests.tinymodels import digit_png
from tests.tinyserve import serve_cached
from tests.tinyservices import TINY


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def operation(page: Page, method: str, path: str) -> Locator:
    """The operation block of `method path` (exact path: /v2 must not match /v2/models)."""
    exact = re.compile(rf"^{re.escape(path)}$")
    return page.locator(f".opblock-{method.lower()}").filter(
        has=page.locator(".opblock-summary-path", has_text=exact)
    )


def try_it_out(block: Locator, body: str | None = None) -> tuple[int, str]:
    """Open the block, press "Try it out", fill the JSON body if given, press Execute; the
    status code and response body the page shows."""
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    if body is not None:
        block.locator("textarea.body-param__text").fill(body)
    block.get_by_role("button", name="Execute").click()
    row = block.locator(".live-responses-table .response").first
    row.locator(".response-col_status").wait_for(timeout=30_000)
    status = int(row.locator(".response-col_status").inner_text().strip())
    return status, row.locator(".response-col_description pre").first.inner_text()


def listed_operations(page: Page) -> set[tuple[str, str]]:
    page.locator(".opblock").first.wait_for(timeout=30_000)
    methods = page.locator(".opblock-summary-method").all_inner_texts()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    return {(m.strip().upper(), p.strip()) for m, p in zip(methods, paths, strict=True)}


@pytest.mark.parametrize("service", sorted(TINY))
def test_docs_page_renders_and_tries_requests(
    service: str, browser: Browser, tmp_path: Path
) -> None:
    tiny = TINY[service]
    tiny.seed(tmp_path / "cache")
    with serve_cached(service, tmp_path / "cache", tmp_path / "service.log", tiny.env) as served:
        spec = httpx.get(f"{served.url}/openapi.json").json()
        assert spec["openapi"].startswith("3.1")
        declared = {
            (method.upper(), path)
            for path, item in spec["paths"].items()
            for method in item
            if method in {"get", "post", "put", "delete", "patch"}
        }
        page = browser.new_page()
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(f"{served.url}/docs")
        assert listed_operations(page) == declared
        assert "Unable to render" not in page.content()
        assert not failed, f"requests the page could not make: {failed}"
        page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)

        status, text = try_it_out(operation(page, "GET", "/v1/model"))
        assert status == 200, text
        served_names = {model["name"] for model in json.loads(text)["models"].values()}
        assert served_names and served_names <= {
            model["name"] for model in httpx.get(f"{served.url}/v1/model").json()["models"].values()
        }
        page.close()


def test_try_it_out_classifies_a_digit(browser: Browser, tmp_path: Path) -> None:
    """The docs page of a real classify process sends a held-out digit, and the page shows a
    200 with its true label (the tiny model is a fitted digit classifier, ~90% held out)."""
    TINY["classify"].seed(tmp_path / "cache")
    png, label = digit_png(0)
    with serve_cached("classify", tmp_path / "cache", tmp_path / "service.log") as served:
        page = browser.new_page()
        page.goto(f"{served.url}/docs")
        body = json.dumps({"image": base64.b64encode(png).decode(), "top_k": 3})
        status, text = try_it_out(operation(page, "POST", "/v1/classify"), body)
        page.close()
    assert status == 200, text
    predictions = json.loads(text)["predictions"]
    assert len(predictions) == 3
    assert predictions[0]["label"] == str(label)
