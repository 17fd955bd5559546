"""Painter responsiveness on a 4096x4096 image, measured in Debian's Chromium (headless, software rendering).

Serves static/ on a free port, opens a bare page that builds the real `Painter` (static/js/painter.js)
over a generated 4096x4096 image, and measures:

- per stroke segment: rasterising the segment into the full-resolution mask (`paintSegment`) plus
  bringing the overlay and the screen up to date (`flush`: dirty-rectangle composite), for several
  brush sizes and segment lengths as a fast mouse produces them;
- real input: Playwright mouse strokes, timing every frame the painter composited;
- saving: encoding the 4096x4096 mask as an 8-bit grayscale PNG (static/js/png.js).

Usage: python bench/ui_bench.py [--out bench/ui.md] [--segments 300]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import platform
import statistics
import threading
from pathlib import Path

from common import pct  # bench/common.py: the folder of this script is on sys.path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SIZE = 4096

PAGE = """<!doctype html><html><head><link rel="stylesheet" href="/static/css/app.css">
<style>body{margin:0} #stage{position:absolute;inset:0}</style></head>
<body><div id="stage"></div>
<script type="module">
import { Painter } from "/static/js/painter.js";
import { encodeGrayPNG } from "/static/js/png.js";
const N = %(size)d;
const src = new OffscreenCanvas(N, N);
const ctx = src.getContext("2d");
const g = ctx.createLinearGradient(0, 0, N, N);
g.addColorStop(0, "#203050"); g.addColorStop(1, "#d0a070");
ctx.fillStyle = g; ctx.fillRect(0, 0, N, N);
const painter = new Painter(document.getElementById("stage"), src, N, N);
window.painter = painter;
window.encode = async () => {
  const t0 = performance.now();
  const blob = await encodeGrayPNG(painter.mask, N, N);
  return { ms: performance.now() - t0, bytes: blob.size };
};
window.segments = (size, count, step) => {
  painter.setSize(size);
  const times = [];
  let x = 200, y = 200, dx = step, dy = step * 0.37;
  painter._beginOp("brush");
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    let nx = x + dx, ny = y + dy;
    if (nx < 100 || nx > N - 100) { dx = -dx; nx = x + dx; }
    if (ny < 100 || ny > N - 100) { dy = -dy; ny = y + dy; }
    painter.paintSegment(x, y, nx, ny, 1, 1, false);
    painter.flush();
    times.push(performance.now() - t0);
    x = nx; y = ny;
  }
  painter._endOp();
  return times;
};
window.ready = true;
</script></body></html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/ui.md")
    parser.add_argument("--segments", type=int, default=300)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            if self.path == "/bench":
                body = (PAGE % {"size": SIZE}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(ROOT)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/bench"

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.wait_for_function("window.ready === true")
        version = browser.version
        # brush diameters in image pixels; a 4096 image fits ~900 px of screen (scale ~0.21), so
        # 400 image px is an ~85 px brush on screen; segment length ~ a fast mouse move per event
        for size, step in [(32, 16), (128, 40), (400, 60), (1000, 120)]:
            page.evaluate("([s, c, st]) => window.segments(s, c, st)", [size, 20, step])  # warm-up (JIT)
            times = page.evaluate("([s, c, st]) => window.segments(s, c, st)", [size, args.segments, step])
            rows.append((size, step, statistics.median(times), pct(times, 95), max(times)))
            print(f"brush {size:5d}px step {step:4d}px: p50 {rows[-1][2]:.2f} ms  p95 {rows[-1][3]:.2f} ms")

        # Real mouse input end to end: frames composited while Playwright drags across the canvas.
        page.evaluate(
            "() => { window.painter.setSize(200); window.painter.stats.frames = []; window.painter.stats.segments = []; }"
        )
        page.mouse.move(300, 300)
        page.mouse.down()
        for i in range(6):
            page.mouse.move(1100 if i % 2 == 0 else 300, 300 + 80 * i, steps=60)
        page.mouse.up()
        stats = page.evaluate("() => window.painter.stats")
        frames, segs = stats["frames"], stats["segments"]
        encode = [page.evaluate("window.encode()") for _ in range(3)]
        enc_ms = statistics.median(e["ms"] for e in encode)
        browser.close()
    httpd.shutdown()

    lines = [
        "# Painter responsiveness (browser benchmark)",
        "",
        f"`python bench/ui_bench.py` on {platform.machine()}, {platform.system()}, Chromium {version} headless with",
        "`--disable-gpu` (software canvas), 1440x900 viewport, a 4096x4096 image and mask. Time per stroke",
        "segment = rasterising the segment into the full-resolution mask + compositing its dirty rectangle",
        "into the overlay and onto the screen. A frame at 60 Hz is 16.7 ms.",
        "",
        "| brush diameter (image px) | segment length (px) | p50 ms | p95 ms | max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, step, p50, p95, mx in rows:
        lines.append(f"| {size} | {step} | {p50:.2f} | {p95:.2f} | {mx:.2f} |")
    lines += [
        "",
        f"Real mouse strokes (Playwright, brush 200 px, {len(segs)} segments, {len(frames)} frames):",
        f"segment rasterise p50 {statistics.median(segs):.2f} ms, p95 {pct(segs, 95):.2f} ms; "
        f"frame composite p50 {statistics.median(frames):.2f} ms, p95 {pct(frames, 95):.2f} ms.",
        "",
        f"Saving: encoding the 4096x4096 mask as an 8-bit grayscale PNG (CompressionStream deflate) takes "
        f"{enc_ms:.0f} ms ({encode[0]['bytes'] / 1024:.0f} KiB).",
        "",
        "Raw: " + json.dumps({"rows": rows, "encode_ms": enc_ms}),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
