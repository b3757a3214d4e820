"""Listing in pages: ``POST /<kind>/paginate`` with ``{"filter", "token", "maximumResults"}``.

A reply is ``{"data": [...], "token", "nextToken", "isTruncated"}``; filters are trees of
``{"operator", "field", "value"}`` leaves under ``And``/``Or`` nodes (reference §1.4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, Optional, TypeVar, Union

from .exceptions import APIError

if TYPE_CHECKING:
    from ._http import HttpClient

__all__ = ["PAGE_SIZE", "Page", "TagsArg", "tag_filter", "uuid_filter", "paginate", "fetch_page"]

T = TypeVar("T")
# Documents asked per page when iterating: few round trips (the server's default page is small;
# qcompute's server sends at most 1,000).
PAGE_SIZE = 1000
TagsArg = Union[str, Iterable[str], None]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing.

    Attributes:
        items: the objects of this page.
        token: the token that asked for this page (``None`` for the first).
        next_token: pass it as ``token`` to get the next page.
        is_truncated: more pages follow.
    """

    items: list[T] = field(default_factory=list)
    token: Optional[str] = None
    next_token: Optional[str] = None
    is_truncated: bool = False

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def tag_filter(tags: TagsArg, tags_intersect: TagsArg) -> Optional[dict[str, Any]]:
    """The filter: Or of ``Tags == t`` for ``tags``, And for ``tags_intersect`` (which wins)."""
    chosen, operator = (tags_intersect, "And") if tags_intersect else (tags, "Or")
    if not chosen:
        return None
    values = [chosen] if isinstance(chosen, str) else list(chosen)
    leaves = [{"operator": "Equal", "field": "Tags", "value": tag} for tag in values]
    return leaves[0] if len(leaves) == 1 else {"operator": operator, "filters": leaves}


def uuid_filter(uuids: list[str]) -> dict[str, Any]:
    return {"operator": "In", "field": "Uuid", "value": uuids}


def fetch_page(http: "HttpClient", path: str, filter_: Optional[dict[str, Any]],
               token: Optional[str] = None, maximum: Optional[int] = None) -> Page[dict[str, Any]]:
    """One page of documents."""
    reply = http.post(path, json={"filter": filter_, "token": token, "maximumResults": maximum})
    if not isinstance(reply, dict) or not isinstance(reply.get("data"), list):
        raise APIError(f"POST {path} answered without a 'data' list: {reply!r}")
    return Page(reply["data"], token, reply.get("nextToken"), bool(reply.get("isTruncated")))


def paginate(http: "HttpClient", path: str,
             filter_: Optional[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every document, page after page of :data:`PAGE_SIZE` (a server may send fewer), until
    ``isTruncated`` is false or no ``nextToken``."""
    token: Optional[str] = None
    while True:
        page = fetch_page(http, path, filter_, token, PAGE_SIZE)
        yield from page.items
        if not page.is_truncated or not page.next_token:
            return
        if page.next_token == token:
            raise APIError(f"POST {path} returned the same nextToken twice: {token!r}")
        token = page.next_token
