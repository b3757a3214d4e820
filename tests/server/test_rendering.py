"""JSONRoute's rendering: orjson, and stdlib JSON for what orjson refuses."""
from __future__ import annotations

import json

from qcompute.server.api.rendering import render


def test_plain_json_is_rendered_as_json_would():
    doc = {"a": [1, 2.5, None, True], "b": {"c": "é"}, 3: "non-str key"}
    assert json.loads(render(doc).body) == {"a": [1, 2.5, None, True], "b": {"c": "é"},
                                            "3": "non-str key"}


def test_an_integer_beyond_64_bits_is_still_rendered():
    reply = render({"offset": 2**64}, 201)
    assert reply.status_code == 201 and json.loads(reply.body) == {"offset": 2**64}
    assert reply.media_type == "application/json"
