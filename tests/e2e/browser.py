"""Headless Debian chromium through Playwright, never a downloaded browser; a tiny loopback server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.needs import require_marker

CHROMIUM = os.environ.get("PFI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} not found (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


@contextlib.contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1:<free port>; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


@contextlib.contextmanager
def browser_context(user_data_dir: Path, *, javascript: bool = True, width: int = 1280, height: int = 900):
    """A persistent headless chromium context (its own profile dir), closed on exit."""
    require_marker("browser", "headless Chromium")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            java_script_enabled=javascript,
            viewport={"width": width, "height": height},
            timeout=60_000,
        )
        try:
            yield ctx
        finally:
            ctx.close()


# What a user would see as broken layout, measured in the page (issue 29): every table, pre and scrolling
# box inside a card fits (scrollWidth <= clientWidth: nothing cut at the card's edge or scrolled sideways),
# no element reaches past its card's right edge, and the cards side by side in a .grid2 row are balanced
# (the shorter one's content at least half the taller's) or stacked.
_LAYOUT_JS = """
() => {
  const problems = [];
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
    (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
  const [sw, iw] = [document.documentElement.scrollWidth, window.innerWidth];
  if (sw > iw) problems.push(`the page is ${sw}px wide in a ${iw}px window`);
  for (const card of document.querySelectorAll('section.card')) {
    const cr = card.getBoundingClientRect();
    for (const el of card.querySelectorAll('table, pre, .scroll')) {
      if (el.scrollWidth > el.clientWidth + 1)
        problems.push(`#${card.id}: ${name(el)} holds ${el.scrollWidth}px in ${el.clientWidth}px`);
    }
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > cr.right + 0.5) {
        problems.push(`#${card.id}: ${name(el)} ends at ${Math.round(r.right)}px, past its card's edge at ${Math.round(cr.right)}px`);
        break;
      }
    }
  }
  for (const row of document.querySelectorAll('.grid2')) {
    const cards = [...row.children].filter(c => c.matches('section.card')).map(c => {
      const r = c.getBoundingClientRect();
      let bottom = r.top;
      for (const k of c.children) bottom = Math.max(bottom, k.getBoundingClientRect().bottom);
      return {id: c.id, top: r.top, content: bottom - r.top};
    });
    for (let i = 1; i < cards.length; i++) {
      const [a, b] = [cards[i - 1], cards[i]];
      if (Math.abs(a.top - b.top) > 1) continue;  // stacked
      const [lo, hi] = [Math.min(a.content, b.content), Math.max(a.content, b.content)];
      if (lo < hi / 2)
        problems.push(`#${a.id} (${Math.round(a.content)}px of content) beside #${b.id} (${Math.round(b.content)}px)`);
    }
  }
  return problems;
}
"""


def layout_problems(page) -> list[str]:  # type: ignore[no-untyped-def]
    """What does not fit on the page open in `page` (see _LAYOUT_JS); [] when everything does."""
    return list(page.evaluate(_LAYOUT_JS))
