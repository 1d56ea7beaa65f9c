"""Regenerate the README's screenshots: docs/img/dashboard.png and docs/img/report.png.

The live dashboard is served on an empty SQLite bus and opened in Debian's headless Chromium
(through Playwright; never a downloaded browser); then a real backtest of the shipped sample
(the ema-cross strategy, Monday 5 May 2014) runs into that bus as another process, so the
page fills up live. Once the dashboard has taken in every event it is captured, and so is
the backtest's report page.

    python scripts/screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from playwright.sync_api import sync_playwright

from tradepipe.bus import open_bus
from tradepipe.ops.dashboard import DashboardFeed, dashboard_router
from tradepipe.runtime.runner import ensure_topics
from tradepipe.runtime.tail import BusTail
from tradepipe.sources import sample_paths

REPO = Path(__file__).resolve().parents[1]
WINDOW = ("2014-05-05T00:00:00Z", "2014-05-06T00:00:00Z")
DASHBOARD_VIEWPORT = {"width": 1600, "height": 1000}
REPORT_VIEWPORT = {"width": 1000, "height": 1000}


def backtest(workdir: Path, bus_url: str) -> Path:
    """The sample's Monday through the ema-cross pipeline into ``bus_url``; the report page."""
    report_dir = workdir / "report"
    data = [arg for path in sample_paths() for arg in ("--data", str(path))]
    subprocess.run([sys.executable, "-m", "tradepipe", "backtest", *data, "--strategy", "ema-cross",
                    "--from", WINDOW[0], "--to", WINDOW[1], "--bus", bus_url, "--report", str(report_dir),
                    "--audit", str(workdir / "audit.db")],
                   check=True, cwd=workdir, stdout=subprocess.DEVNULL)
    return report_dir / "report.html"


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def dashboard_during_backtest(browser, workdir: Path, out: Path) -> Path:
    """Capture the dashboard after a backtest ran while it was open; returns the report page."""
    bus_url = f"sqlite:///{workdir / 'bus.db'}"
    bus = open_bus(bus_url, create=True)
    ensure_topics(bus)
    tail = BusTail(bus)
    feed = DashboardFeed(tail)
    app = FastAPI()
    app.include_router(dashboard_router(feed))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    with tail:
        thread.start()
        try:
            wait_until(lambda: server.started, 10, "the server")
            page = browser.new_page(viewport=DASHBOARD_VIEWPORT)
            page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/dashboard")
            page.locator("#conn.on").wait_for()
            report = backtest(workdir, bus_url)
            end = {t: n for t in bus.topics() if (n := sum(bus.end_offsets(t).values()))}
            wait_until(lambda: feed.snapshot().get("counts", {}).get("byTopic") == end, 60,
                       "the dashboard to take in the run")
            page.locator("#fills tbody tr").first.wait_for()
            page.wait_for_timeout(500)  # the last update is drawn
            page.screenshot(path=str(out), full_page=True)
            page.close()
        finally:
            feed.close()
            server.should_exit = True
            thread.join(10)
    bus.close()
    return report


def report_screenshot(browser, report: Path, out: Path) -> None:
    """The report from its top down to its trades table (hundreds of rows: left out)."""
    page = browser.new_page(viewport=REPORT_VIEWPORT)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    trades = page.locator("h2", has_text="Trades")
    height = trades.bounding_box()["y"] if trades.count() else page.evaluate("document.body.scrollHeight")
    page.screenshot(path=str(out), full_page=True, clip={"x": 0, "y": 0, "width": REPORT_VIEWPORT["width"],
                                                         "height": height})
    page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tradepipe-screenshots-") as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        try:
            report = dashboard_during_backtest(browser, Path(tmp), args.out / "dashboard.png")
            report_screenshot(browser, report, args.out / "report.png")
        finally:
            browser.close()
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
