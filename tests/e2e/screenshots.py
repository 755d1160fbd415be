"""The README's pictures (docs/img/): which page each shows, what it is made from, and how it is kept small.

Made by tests/test_screenshots.py from a real run (`./test.sh --screenshots` writes them here; a normal run
writes them to .pytest_cache/d/ui-screenshots/ only). Beside them, docs/img/screenshots.json records the
sha256 of every template (and so the CSS, which is in base.html) and module each picture was made from: a
fast test fails when one of them changed and the picture was not made again. Content hashes, not mtimes:
a git checkout resets mtimes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMG = REPO / "docs" / "img"
MANIFEST = IMG / "screenshots.json"
TEMPLATES = "app/service/html/templates"
# picture -> the files whose content it shows (a change to one makes the picture stale)
SOURCES: dict[str, list[str]] = {
    "report.png": [f"{TEMPLATES}/base.html", f"{TEMPLATES}/report.html", f"{TEMPLATES}/_macros.html"],
    "fleet.png": [f"{TEMPLATES}/base.html", f"{TEMPLATES}/fleet.html"],
    "terminal.png": ["app/render_text.py"],
}
COMMAND = "./test.sh --screenshots"
MAX_BYTES = 350_000  # each picture: the README is read on slow links too
COLOURS = 128  # palette size after quantising: text stays crisp, the PNG shrinks ~3x


def digest(rel: str) -> str:
    return hashlib.sha256((REPO / rel).read_bytes()).hexdigest()


def stale() -> list[str]:
    """The pictures older than a file they show (or missing), each with why; [] when all are current."""
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as e:
        return [f"{MANIFEST.relative_to(REPO)}: {e}"]
    out = []
    for name, files in SOURCES.items():
        if not (IMG / name).is_file():
            out.append(f"docs/img/{name} is missing")
            continue
        made = recorded.get(name, {}).get("sha256", {})
        changed = [f for f in files if made.get(f) != digest(f)]
        if changed:
            out.append(f"docs/img/{name} was made before the current {', '.join(changed)}")
    return out


def optimise(src: Path, dst: Path, *, top: int | None = None) -> int:
    """src (a browser screenshot) as a small PNG at dst: cut to its first `top` pixels, quantised to
    COLOURS colours, written optimised. Its size in bytes."""
    from PIL import Image

    with Image.open(src) as im:
        rgb = im.convert("RGB")
        if top is not None and rgb.height > top:
            rgb = rgb.crop((0, 0, rgb.width, top))
        small = rgb.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        small.save(dst, format="PNG", optimize=True)
    return dst.stat().st_size


def record(names: list[str], run: str) -> None:
    """Write the hashes the pictures `names` were made from into the manifest (the others kept)."""
    try:
        doc = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        doc = {}
    for name in names:
        doc[name] = {"sha256": {f: digest(f) for f in SOURCES[name]}, "made": run,
                     "bytes": (IMG / name).stat().st_size}
    MANIFEST.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
