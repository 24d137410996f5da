"""The tune report, opened as a person would: in a real headless Chromium (Debian's, driven by Playwright), offline.
It loads with no console errors and no request but its own file, shows the curves and the table, sorts and
filters, renders hostile text as text, and looks like a page in a screenshot."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import skip_or_fail, steered_pair

HOSTILE = [
    "<script>alert('script')</script>",
    "</script><script>alert('closed')</script>",
    "</textarea><img src=x onerror=alert('img')>",
    "\"quotes' and `ticks` & ampersands &amp; <!-- a comment",
    "مرحبا بالعالم right to left, then e\u0301 combining and \u202eoverride",
    "null\x00byte",
    "x" * 20000,  # one very long line
]


def records(prompts: int = 30, alphas=(0.0, 0.5, 1.0, 2.0), hostile: bool = True) -> list[dict]:
    """A --save-responses file's lines: α = 1 rewards well but lengthens; prompt 3 is where it loses most."""
    rng = np.random.default_rng(0)
    lines = []
    for alpha in alphas:
        for p in range(prompts):
            text = f"answer {p} " + " ".join(f"w{(p * 7 + i) % 50}" for i in range(5 + int(3 * alpha)))
            if hostile and alpha == 0 and p < len(HOSTILE):
                text = HOSTILE[p]
            reward = 0.4 * alpha * (1 - alpha / 3) + 0.1 * rng.normal() - (2.0 if (p == 3 and alpha == 1.0) else 0)
            lines.append(
                {
                    "alpha": alpha,
                    "part": "selection",
                    "prompt_index": p,
                    "sample": 0,
                    "prompt": f"question {p}: " + ("<b>bold?</b>" if p == 1 else f"topic{p}"),
                    "response": text,
                    "tokens": len(text.split()),
                    "finish": "length" if alpha == 2.0 and p % 4 == 0 else "stop",
                    "reward": float(reward),
                }
            )
    return lines


def save(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        skip_or_fail("no Chromium on this machine: apt-get install chromium (make test does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install playwright (the test extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> Path:
    from expo_cli import report

    folder = tmp_path_factory.mktemp("report")
    return report(save(folder / "responses.jsonl", records()), folder / "report.html")


def open_page(browser, path: Path):
    """The page opened from disk, with what it logged, requested and asked (dialogs) recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = {"console": [], "requests": [], "dialogs": [], "errors": []}
    page.on("console", lambda m: seen["console"].append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_selector("#prompts .prompt")
    return page, seen


def shown_order(page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all("#prompts .prompt", "cards => cards.map(c => c.dataset.index)")]


def test_the_page_loads_offline_with_its_curves_and_table_and_no_errors(browser, page_file):
    page, seen = open_page(browser, page_file)
    assert seen["requests"] == [page_file.as_uri()]  # nothing but the file itself: no CDN, font or image
    assert seen["console"] == [] and seen["errors"] == [] and seen["dialogs"] == []
    assert page.locator("#charts svg").count() == 3  # gain over α = 0, reward, length
    assert page.locator("#statistics tbody tr").count() == 4  # α = 0, 0.5, 1, 2
    assert "Chosen α = " in page.inner_text("#verdict")
    assert page.inner_text("#count") == "30 of 30 prompts"
    cut = page.locator("#prompts .cut").count()
    assert cut == len([p for p in range(30) if p % 4 == 0])  # α = 2's cut responses are flagged
    html = page_file.read_text()
    assert "http://" not in html.replace("http://www.w3.org/", "") and "https://" not in html
    assert str(page_file.parent) not in html  # no local path


def test_sorting_and_filtering_change_what_is_shown(browser, page_file):
    page, _ = open_page(browser, page_file)
    lines = records()
    chosen = float(page.eval_on_selector("#tune-data", "d => JSON.parse(d.textContent).compared"))
    reward = {(r["alpha"], r["prompt_index"]): r["reward"] for r in lines}
    gains = {p: reward[chosen, p] - reward[0.0, p] for p in range(30)}
    assert shown_order(page) == sorted(range(30), key=lambda p: (gains[p], p))  # worst first, by default
    page.select_option("#order", "gain-descending")
    assert shown_order(page) == sorted(range(30), key=lambda p: (-gains[p], p))
    page.select_option("#order", "index")
    assert shown_order(page) == list(range(30))
    spread = {
        p: max(reward[a, p] for a in (0.0, 0.5, 1.0, 2.0)) - min(reward[a, p] for a in (0.0, 0.5, 1.0, 2.0))
        for p in range(30)
    }
    page.select_option("#order", "spread")
    assert shown_order(page) == sorted(range(30), key=lambda p: (-spread[p], p))
    page.fill("#filter", "TOPIC17")  # case-insensitive, in prompts and responses
    assert shown_order(page) == [17] and page.inner_text("#count") == "1 of 30 prompts"
    page.fill("#filter", "")
    page.select_option("#order", "index")
    page.click("#worst")
    assert page.eval_on_selector("#order", "s => s.value") == "gain-ascending"
    assert shown_order(page)[0] == min(gains, key=gains.get)


def test_the_verdict_is_in_plain_words_and_the_gain_chart_shows_the_intervals_that_decided(browser, page_file):
    page, _ = open_page(browser, page_file)
    data = page.eval_on_selector("#tune-data", "d => JSON.parse(d.textContent)")
    chosen = float(data["chosen"])
    assert chosen != 0  # α = 1 rewards well in these records
    reward = {(r["alpha"], r["prompt_index"]): r["reward"] for r in records()}
    before = np.mean([reward[0.0, p] for p in range(30)])
    after = np.mean([reward[chosen, p] for p in range(30)])
    wins = np.mean([reward[chosen, p] > reward[0.0, p] for p in range(30)])
    assert page.inner_text("#plain") == (
        f"On the 30 selection prompts, α = {chosen:g} moved the mean reward from {before:.3g} to {after:.3g} and won "
        f"{wins:.0%} of them against α = 0."
    )
    gain_chart = page.locator("#charts svg").first
    labels = gain_chart.evaluate("svg => [...svg.querySelectorAll('text')].map(t => t.textContent)")
    assert "gain in mean reward over α = 0" in labels
    assert any("simultaneous 95% CI" in label for label in labels)


def test_when_alpha_0_is_chosen_the_browser_compares_with_the_best_other(browser, tmp_path):
    """Not α = 0 with itself (every gain 0.00, the sorts meaningless): the best other candidate."""
    from expo_cli import report

    lines = records(alphas=(0.0, 0.5, 1.0), hostile=False)
    for line in lines:
        line["reward"] = -line["reward"] if line["alpha"] else line["reward"]  # every α > 0 loses
    page_path = report(save(tmp_path / "worse.jsonl", lines), tmp_path / "report.html")
    page, seen = open_page(browser, page_path)
    data = page.eval_on_selector("#tune-data", "d => JSON.parse(d.textContent)")
    assert data["chosen"] == "0" and seen["errors"] == []
    reward = {(r["alpha"], r["prompt_index"]): r["reward"] for r in lines}
    best = max((0.5, 1.0), key=lambda a: np.mean([reward[a, p] for p in range(30)]))
    assert data["compared"] == f"{best:g}"
    gains = {p: reward[best, p] - reward[0.0, p] for p in range(30)}
    assert len(set(gains.values())) > 1
    assert shown_order(page) == sorted(range(30), key=lambda p: (gains[p], p))
    assert page.inner_text("#plain").startswith("No α beat the aligned model")


def test_the_length_sort_puts_the_largest_change_either_way_first(browser, tmp_path):
    """ "length change" sorts by its size: a response 5 tokens shorter comes before one 3 tokens longer."""
    from expo_cli import report

    lines = records(hostile=False)
    for line in lines:
        line["tokens"] = 20 + (0 if line["alpha"] == 0 else (line["prompt_index"] * 5) % 11 - 5)
    page, _ = open_page(browser, report(save(tmp_path / "lengths.jsonl", lines), tmp_path / "report.html"))
    compared = float(page.eval_on_selector("#tune-data", "d => JSON.parse(d.textContent).compared"))
    tokens = {(r["alpha"], r["prompt_index"]): r["tokens"] for r in lines}
    change = {p: tokens[compared, p] - tokens[0.0, p] for p in range(30)}
    assert min(change.values()) < 0 < max(change.values())
    page.select_option("#order", "length")
    assert shown_order(page) == sorted(range(30), key=lambda p: (-abs(change[p]), p))


def test_a_hostile_response_renders_as_text(browser, page_file):
    page, seen = open_page(browser, page_file)
    page.select_option("#order", "index")
    for p, text in enumerate(HOSTILE):
        # α = 0 is the first column: its text is shown as written, character for character
        shown = page.eval_on_selector(
            f'#prompts .prompt[data-index="{p}"] .response .text', "node => node.textContent"
        )
        assert shown == text, p
    assert page.inner_text('#prompts .prompt[data-index="1"] .prompt-text') == "question 1: <b>bold?</b>"
    assert page.eval_on_selector_all("#prompts script, #prompts img, #prompts b", "nodes => nodes.length") == 0
    assert seen["dialogs"] == [] and seen["errors"] == []
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280  # the 20,000-character line wraps instead of widening the page


def test_every_name_on_the_page_is_text_not_markup(browser, tmp_path):
    """Not only responses: a file name (in the notes), warnings and settings reach the page through escaping."""
    from expo_cli import report

    hostile = "<img src=x onerror=alert('name')>.jsonl"
    page_path = report(save(tmp_path / hostile, records(hostile=False)), tmp_path / "report.html")
    page, seen = open_page(browser, page_path)
    assert seen["dialogs"] == [] and seen["errors"] == []
    assert page.eval_on_selector_all("#settings img, #verdict img, .warnings img", "nodes => nodes.length") == 0
    assert f"statistics recomputed from {hostile}" in page.inner_text("#settings")


def test_a_screenshot_looks_like_a_page(browser, page_file, tmp_path):
    from PIL import Image

    page, _ = open_page(browser, page_file)
    shot = page.screenshot()
    image = Image.open(io.BytesIO(shot)).convert("L")
    assert image.size == (1280, 900)
    pixels = np.asarray(image, dtype=np.float64)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text and lines on a light background


def test_hundreds_of_prompts_by_ten_candidates_stay_a_few_megabytes(tmp_path):
    from expo_cli import report

    lines = records(prompts=300, alphas=tuple(0.25 * i for i in range(10)), hostile=False)
    for line in lines:
        line["response"] = (line["response"] + " ") * 12  # about 600 characters each
    page = report(save(tmp_path / "responses.jsonl", lines), tmp_path / "report.html")
    assert page.stat().st_size < 5e6


def test_the_report_of_a_tune_and_of_its_run_folder_are_the_same_page(tmp_path, expo):
    sft, aligned = steered_pair(tmp_path / "pair")
    prompts = save(tmp_path / "prompts.jsonl", [{"prompt": f"w{8 + i} w{30 + i}"} for i in range(10)])
    grader = tmp_path / "grader.py"
    grader.write_text("def w7(prompt, response):\n    return response.split().count('w7')\n")
    inputs = ["--sft", sft, "--aligned", aligned, "--prompts", prompts, "--reward-fn", f"{grader}:w7"]
    settings = ["--alpha", "1", "--max-new-tokens", "6", "--temperature", "1", "--run-dir", tmp_path / "run"]
    run = expo("tune", *inputs, *settings, "--report", tmp_path / "tuned.html", "-q")
    assert run.code == 0, run.stderr
    again = expo("report", tmp_path / "run", "-o", tmp_path / "again.html")
    assert again.code == 0, again.stderr
    assert again.stdout.strip() == str(tmp_path / "again.html")
    assert (tmp_path / "tuned.html").read_bytes() == (tmp_path / "again.html").read_bytes()
    assert "pair/aligned" not in (tmp_path / "tuned.html").read_text()


def test_report_errors_are_one_line(tmp_path, expo):
    from expo_cli.constants import VERSION

    (tmp_path / "unfinished").mkdir()
    for name, saved in (
        ("old", {"report": {}, "records": []}),
        ("edited", {"expo": VERSION, "report": {}, "records": []}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(saved))
    (tmp_path / "notes.jsonl").write_text('{"text": "not a tune"}\n')
    for source, message in (
        (tmp_path / "unfinished", "the tune did not finish"),
        (tmp_path / "notes.jsonl", "not a --save-responses file of expo tune"),
        (tmp_path / "nothing", "no such run folder or responses file"),
        (tmp_path / "old", "old/result.json: written by an earlier expo"),
        (tmp_path / "edited", "not the result of this expo tune (KeyError"),
    ):
        run = expo("report", source, "-o", tmp_path / "page.html")
        assert run.code == 3 and run.stderr.strip().splitlines()[-1].startswith("Error: ") and message in run.stderr
        assert not (tmp_path / "page.html").exists()


def test_a_responses_file_holding_line_separators_in_its_text_is_read_back(tmp_path, expo):
    """U+2028, U+2029, U+0085, form feed and a lone CR inside a response and a prompt are text, not line ends: the
    report reads the file expo wrote (ensure_ascii=False keeps them raw) and shows them."""
    lines = records(prompts=12, hostile=False)
    odd = "first\u2028second\u2029third\x85fourth\x0cfifth\rsixth"
    lines[0]["response"], lines[1]["prompt"] = odd, f"ask\u2028{odd}"
    saved = save(tmp_path / "responses.jsonl", lines)
    assert "\u2028" in saved.read_text(encoding="utf-8")
    run = expo("report", saved, "-o", tmp_path / "page.html")
    assert run.code == 0, run.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")  # the page's data is JSON: separators escaped
    assert "first\\u2028second\\u2029third\\u0085fourth\\ffifth\\rsixth" in page
