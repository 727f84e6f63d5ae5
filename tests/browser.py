"""Open a local HTML page in headless Chromium (Debian `chromium`, driven by Playwright) and report
what a person would hit: console errors, script errors, failed loads, players and images that
did not load. Used by the report tests; `.ci/run` installs chromium.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Flags for a machine without a display or network (see shared/ENVIRONMENT.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

_MEDIA_STATE = """() => ({
  audio: [...document.querySelectorAll('audio')].map(a => ({
    src: a.currentSrc, ready: a.readyState, error: a.error ? a.error.code : null, duration: a.duration})),
  images: [...document.images].map(i => ({
    src: i.currentSrc, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
  title: document.title,
  text: document.body.innerText,
})"""
_MEDIA_SETTLED = """() => [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)
  && [...document.images].every(i => i.complete)"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    audio: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    text: str = ""

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")]

    @property
    def broken_audio(self) -> list[dict[str, Any]]:
        return [a for a in self.audio if a["error"] is not None or a["ready"] < 1 or not a["duration"]]

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i["complete"] or i["width"] == 0]


def check_page(page_path: Path, *, screenshot: Path | None = None, timeout_s: float = 60.0) -> PageCheck:
    """Load `page_path`, wait until every player has its metadata and every image is decoded."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    result = PageCheck()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: result.console.append((message.type, message.text)))
            page.on("pageerror", lambda error: result.page_errors.append(str(error)))
            page.on(
                "requestfailed",
                lambda request: result.failed_requests.append(f"{request.url}: {request.failure}"),
            )
            page.goto(page_path.resolve().as_uri(), wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_function(_MEDIA_SETTLED, timeout=timeout_s * 1000)
            state = page.evaluate(_MEDIA_STATE)
            result.audio, result.images = state["audio"], state["images"]
            result.title, result.text = state["title"], state["text"]
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result
