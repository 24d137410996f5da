"""The README's pictures of a tune report, opened in headless Chromium: its top (verdict, curves, statistics) and
its prompt browser at the prompts where the chosen α lost most (PNG with "-answers" added to its name).

    python dev/report_screenshot.py runs/reproduce/seed-0/report-dpo-20.html examples/report.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.goto(args.report.resolve().as_uri())
        page.wait_for_selector("#prompts .prompt")
        page.screenshot(path=str(args.png))
        answers = args.png.with_name(f"{args.png.stem}-answers.png")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.click("#worst")
        page.screenshot(path=str(answers))
        browser.close()
    print(args.png, answers)


if __name__ == "__main__":
    main()
