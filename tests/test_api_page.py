"""The static page: every string translated, no inline script, nothing the CSP would block."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dashboard_api.context import LANGUAGES
from dashboard_api.locations import REGIONS
from dashboard_api.views import PROGRESS

STATIC = Path(__file__).resolve().parents[1] / "dashboard_api" / "static"


def strings(lang: str) -> dict[str, str]:
    data = json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    assert all(isinstance(v, str) and v for v in data.values())
    return data


def scripts() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(STATIC.glob("*.js")))


class PageScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.keys: list[str] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self.style_attrs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag not in ("meta", "link", "br", "img", "input"):
            self.stack.append(tag)
        if tag == "script" and not a.get("src"):
            self.inline_scripts += 1
        self.inline_handlers += [k for k in a if k.startswith("on")]
        self.style_attrs += "style" in a
        if a.get("data-i18n"):
            self.keys.append(str(a["data-i18n"]))

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if data.strip() and (not self.stack or self.stack[-1] not in ("script", "style")):
            self.text.append(data.strip())


@pytest.fixture(scope="module")
def page() -> PageScan:
    scan = PageScan()
    scan.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return scan


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_it_has_every_english_key_in_every_translation(lang: str) -> None:
    en, other = strings("en"), strings(lang)
    assert sorted(set(en) - set(other)) == []
    assert sorted(set(other) - set(en)) == []
    for key, text in en.items():  # the same {placeholders}, so nothing shows as "{name}"
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", other[key])), key


def test_it_has_no_hard_coded_text_in_the_page(page: PageScan) -> None:
    assert page.text == []


def test_it_translates_every_key_the_page_and_script_use(page: PageScan) -> None:
    en = strings("en")
    script = scripts()
    used = set(page.keys) | set(re.findall(r"""\bt\(\s*"([a-z_.]+)"\s*[,)]""", script))
    assert len(used) > 40 and sorted(used - set(en)) == []


def test_it_translates_every_step_status_and_region() -> None:
    en = strings("en")
    assert {f"step.{s}" for s in PROGRESS} <= set(en)
    assert {f"status.{s}" for s in ("Queued", "Installing", "Running", "Rebuilding", "Destroying", "Error",
                                    "Suspended", "Restarting")} <= set(en)
    assert {f"city.{r}" for r in REGIONS} <= set(en)
    assert {f"schedule.{s}" for s in ("none", "daily", "weekly", "monthly")} <= set(en)


def test_it_words_every_history_item_the_api_can_send() -> None:
    from dashboard_api.account import TEXTS

    for lang in LANGUAGES:
        assert {f"history.{kind}" for kind in TEXTS} <= set(strings(lang)), lang
    for kind, text in TEXTS.items():  # the page's words take the same parameters as the API's
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", strings("en")[f"history.{kind}"])), kind


def test_it_has_the_seeds_empty_state_text() -> None:
    assert strings("en")["empty.text"] == ("You haven't subscribed to any plans. Purchase The VPS VPN so that we "
                                           "can build it for you!")


def test_it_has_no_inline_script_or_handler(page: PageScan) -> None:
    assert page.inline_scripts == 0 and page.inline_handlers == [] and page.style_attrs == 0
    script = scripts()
    assert "innerHTML" not in script and "eval(" not in script and "new Function" not in script
