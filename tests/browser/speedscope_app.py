"""The real speedscope app (its npm package, installed by scripts/setup.sh) in headless Chromium: opens a
speedscope file the way `speedscope FILE` does (a script calling speedscope.loadFileFromBase64, named in
the page's #localProfilePath), offline."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from tests.browser.chromium import Chromium, Page
from tests.conftest import require


def speedscope_index() -> Path:
    done = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=60)
    index = Path(done.stdout.strip()) / "speedscope" / "dist" / "release" / "index.html"
    require(index.is_file(), f"no speedscope app at {index} (npm install -g speedscope)")
    return index


def open_in_speedscope(browser: Chromium, path: Path, profiles: int) -> Page:
    """A page of speedscope showing `path` (a file of `profiles` profiles), once it has loaded."""
    loader = path.with_name(path.name + ".load.js")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    loader.write_text(f"speedscope.loadFileFromBase64({json.dumps(path.name)}, {json.dumps(data)})")
    page = browser.new_page(1400, 900)
    page.navigate(f"{speedscope_index().as_uri()}#localProfilePath={loader}")
    page.wait_for(f"document.body.innerText.includes('(1/{profiles})')", timeout=60)
    return page


def press(page: Page, key: str) -> None:
    """A key press speedscope's shortcuts see (n: next profile, 3: sandwich view)."""
    code = f"Key{key.upper()}" if key.isalpha() else f"Digit{key}"
    page.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": key})
    page.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code})


def errors(page: Page) -> list[str]:
    """Console errors and exceptions (headless Chromium's WebGL fallback warnings left out)."""
    return [e for e in page.console_errors() if not e.startswith(("log.warning", "console.warning"))]
