"""Listings of app-level pulls (``/recordings``, ``/livestreams``): read page by page.

Every field of ``paging`` is optional and the page base is not stated, so the walk reads from page
1, reads page 0 too when page 1 does not start at item 1, and stops at ``total_count``, on an empty
page, on the last page by ``end_offset``, or — without paging — on a short page. Items that cannot
be read are reported with their page and index; they do not fail the page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from exporter.client import ApiClient
from exporter.errors import ApiError
from exporter.model import Paging, decode_json, error_for_status
from exporter.model import _error_doc as error_doc
from exporter.model import _paging as read_paging

PER_PAGE: Final = 100
#: Pages read per listing at most (100,000 items at 100 a page).
MAX_PAGES: Final = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: the readable items, what was wrong with the others, the paging."""

    items: list[T]
    invalid: list[str]  # one message per unreadable item, naming its index
    paging: Paging | None
    count: int  # items on the page, readable or not


def _listed(doc: dict[str, Any]) -> list[Any]:
    """The items of a listing: ``data`` as a list, a list inside ``data``, or ``data`` itself
    as one item (``/livestreams`` is typed as a single object with ``paging`` inside)."""
    data = doc.get("data")
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("livestreams", "recordings", "data", "items"):
            if isinstance(data.get(key), list):
                return list(data[key])
        return [data] if "id" in data else []
    raise ApiError("invalid_response", "field data is missing or not a list")


def parse_page(status: int, content_type: str, body: bytes, parse: Callable[[Any], T]) -> Page[T]:
    """One page of ``/recordings`` or ``/livestreams``. Unreadable items do not fail it."""
    if status != 200:
        raise error_for_status(status, error_doc(content_type, body))
    doc = decode_json(content_type, body)
    if not isinstance(doc, dict) or doc.get("success") is False:
        raise ApiError("invalid_response", "body is not a successful JSON object")
    raw = _listed(doc)
    items, invalid = [], []
    for index, item in enumerate(raw):
        try:
            items.append(parse(item))
        except ValueError as err:
            invalid.append(f"index {index}: {err}")
    return Page(items, invalid, read_paging(doc), len(raw))


@dataclass(frozen=True, slots=True)
class Walked(Generic[T]):
    items: list[T]
    invalid: list[str]  # "page N, index I: what is wrong"
    pages: int
    complete: bool


async def walk(
    client: ApiClient,
    path: str,
    params: Mapping[str, str | int],
    parse: Callable[[Any], T],
    *,
    key: Callable[[T], str],
    max_pages: int = MAX_PAGES,
) -> Walked[T]:
    """Every page of a listing, items de-duplicated by ``key``: from page 1 (page 0 too when
    page 1 does not start at item 1), until the items reach ``total_count``, a page is empty,
    the last one by its ``end_offset``, or (without paging) a page is short."""
    found: dict[str, T] = {}
    invalid: list[str] = []
    read: set[int] = set()
    page_no, complete = 1, False
    while len(read) < max_pages:
        read.add(page_no)
        raw = await client.get(path, {**params, "page_no": page_no, "per_page": PER_PAGE})
        page = parse_page(raw.status, raw.content_type, raw.body, parse)
        found.update((key(item), item) for item in page.items)
        invalid += [f"page {page_no}, {message}" for message in page.invalid]
        paging = page.paging or Paging()
        if page_no == 1 and 0 not in read and (paging.start_offset or 1) > 1:
            page_no = 0  # pages count from 0: page 1 was the second
            continue
        if _last(page, paging, len(found) + len(invalid)):
            complete = True
            break
        page_no = max(read) + 1
    pages = len(read)
    return Walked(list(found.values()), invalid, pages, complete)


def _last(page: Page[Any], paging: Paging, collected: int) -> bool:
    total, end = paging.total_count, paging.end_offset
    if page.count == 0 or (total is not None and (collected >= total or (end or 0) >= total)):
        return True
    return page.paging is None and page.count < PER_PAGE
