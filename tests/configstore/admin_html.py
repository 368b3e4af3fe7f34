"""Reading the admin's HTML in tests: form fields, messages, errors and the text of elements
by class or id. Standard library only."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class Page(HTMLParser):
    """One admin page. `fields` holds what a browser would submit of its forms (inputs and
    textareas by name; the last one wins), `textareas` the textareas alone."""

    def __init__(self, html: str | bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html.decode() if isinstance(html, bytes) else html
        self.fields: dict[str, str] = {}
        self.textareas: dict[str, str] = {}
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.buttons: list[str] = []  # names of submit inputs
        self._chunks: list[str] = []
        self._open: list[tuple[str, dict, int]] = []
        self._by_class: dict[str, list[str]] = {}
        self._by_id: dict[str, str] = {}
        self.redirected = False  # set by a client that followed a redirect to this page
        self.feed(self.html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "input":
            if attrs.get("type") == "submit":
                self.buttons.append(attrs.get("name", ""))
            elif attrs.get("name") and attrs.get("type") not in ("checkbox", "radio"):
                self.fields[attrs["name"]] = attrs.get("value", "")
        if tag not in _VOID:
            self._open.append((tag, attrs, len(self._chunks)))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if not any(t == tag for t, _, _ in self._open):
            return
        while self._open:
            open_tag, attrs, start = self._open.pop()
            text = "".join(self._chunks[start:])
            for cls in attrs.get("class", "").split():
                self._by_class.setdefault(cls, []).append(_squash(text))
            if attrs.get("id"):
                self._by_id[attrs["id"]] = _squash(text)
            if open_tag == "textarea" and attrs.get("name"):
                value = text[1:] if text.startswith("\n") else text  # as browsers read it
                self.textareas[attrs["name"]] = self.fields[attrs["name"]] = value
            if open_tag == "a" and attrs.get("href"):
                self.links.append((attrs["href"], _squash(text)))
            if open_tag == tag:
                break

    def handle_data(self, data):
        self._chunks.append(data)

    # ------------------------------------------------------------------ queries

    @property
    def text(self) -> str:
        return _squash("".join(self._chunks))

    def by_class(self, cls: str) -> list[str]:
        return self._by_class.get(cls, [])

    def by_id(self, element_id: str) -> str | None:
        return self._by_id.get(element_id)

    @property
    def messages(self) -> list[str]:
        """The admin's messages (success, warning, error) of the page."""
        return [m for m in re.findall(r'<ul class="messagelist">(.*?)</ul>', self.html, re.S)]

    def message_texts(self, level: str = "success") -> list[str]:
        found = re.findall(rf'<li class="{level}">(.*?)</li>', "".join(self.messages), flags=re.S)
        return [_squash(Page(m).text) for m in found]

    @property
    def errors(self) -> list[str]:
        """Error notes and field errors."""
        return self.by_class("errornote") + self.by_class("errorlist")

    def href(self, text: str) -> str:
        """The href of the first link whose text is `text`."""
        for href, label in self.links:
            if text == label:
                return href
        raise AssertionError(f"no link {text!r} on the page: {self.links}")

    def form_data(self, **changes) -> dict[str, str]:
        """What submitting the page's form sends, with `changes`."""
        return {**self.fields, **changes}
