"""``/docs`` and ``/redoc`` load nothing from another host: every URL their pages reference is
on the server's own origin, and answers."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest


class _References(HTMLParser):
    """The URLs a page loads: src and href attributes, ReDoc's spec-url, and the string
    literals of inline scripts that look like paths or URLs (Swagger UI's ``url``)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs
                      if name in ("src", "href", "spec-url") and value]

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.urls += re.findall(r"""['"]((?:https?:)?//[^'"]+|/[^'"\s]*)['"]""", data)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_page_and_its_assets_are_served_here(cluster, page):
    response = cluster.client.get(page)
    assert response.status_code == 200, response.text
    assert "text/html" in response.headers["content-type"]
    parser = _References()
    parser.feed(response.text)
    assert len(parser.urls) >= 3, parser.urls  # script, style or spec, icon
    base = str(cluster.client.base_url) + page
    for url in parser.urls:
        absolute = urlsplit(urljoin(base, url))
        assert (absolute.scheme, absolute.netloc) == ("http", "testserver"), url
        path = absolute.path + (f"?{absolute.query}" if absolute.query else "")
        assert cluster.client.get(path).status_code == 200, url
    assert not re.search(r"https?://", response.text), "a host named in the page"


def test_the_assets_are_the_packaged_ones(cluster):
    script = cluster.client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "javascript" in script.headers["content-type"]
    assert cluster.client.get("/docs/assets/redoc.standalone.js").status_code == 200
    assert cluster.client.get("/docs/assets/nothing.js").status_code == 404


def test_the_pages_are_not_operations_of_the_api(cluster):
    paths = cluster.client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths)
