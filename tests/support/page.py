"""Reading the status page (``/``) as a browser would build it."""

from __future__ import annotations

from html.parser import HTMLParser


class StatusPage(HTMLParser):
    """Every tag of the page, the headers of its last table (the meetings'), and its rows with a
    class (the meetings: failing, live, idle, unknown) as (class, cell texts); a ``<br>`` in a
    cell reads as ``br``."""

    def __init__(self, text: str, br: str = "") -> None:
        super().__init__(convert_charrefs=True)
        self.br = br
        self.tags: list[str] = []
        self.headers: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._row: list[str] | None = None
        self._header = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        cls = dict(attrs).get("class")
        if tag == "table":
            self.headers = []
        elif tag == "th":
            self.headers.append("")
            self._header = True
        elif tag == "tr" and cls:
            self.rows.append((cls, []))
            self._row = self.rows[-1][1]
        elif tag == "td" and self._row is not None:
            self._row.append("")
        elif tag == "br" and self._row:
            self._row[-1] += self.br

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "th":
            self._header = False

    def handle_data(self, data: str) -> None:
        if self._header:
            self.headers[-1] += data
        elif self._row:
            self._row[-1] += data

    def by_meeting(self) -> dict[str, dict[str, str]]:
        """The meeting rows as {meeting id: {header: cell text}} (needs a ``br`` separator)."""
        out = {}
        for _, cells in self.rows:
            named = dict(zip(self.headers, cells, strict=True))
            out[named["Meeting"].split(self.br)[0]] = named
        return out
