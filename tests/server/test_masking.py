"""Masking secret values in output chunks: values split across chunks are still masked."""
from __future__ import annotations

import random
import re

import pytest

from qcompute.server.services.masking import MASK, MIN_LENGTH, Masker, OutputMasks


def masked(values: list[str], chunks: list[str]) -> str:
    masker = Masker(values)
    return "".join(masker.feed(c) for c in chunks) + masker.flush()


def reference(values: list[str], text: str) -> str:
    kept = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
    return re.sub("|".join(map(re.escape, kept)), MASK, text) if kept else text


def test_whole_and_split_values_are_masked():
    values = ["hunter22", "s3cr3t-token"]
    text = "pw=hunter22 token=s3cr3t-token end\n"
    expected = "pw=*** token=*** end\n"
    assert masked(values, [text]) == expected
    for cut in range(len(text) + 1):  # every split into two chunks
        assert masked(values, [text[:cut], text[cut:]]) == expected, cut
    assert masked(values, list(text)) == expected  # one character at a time


def test_only_a_possible_start_is_held_back():
    masker = Masker(["password1"])
    assert masker.feed("line one\nthe pass") == "line one\nthe "  # "pass" may be the secret
    assert masker.feed("port is fine\n") == "passport is fine\n"
    assert masker.feed("xpasswo") == "x"
    assert masker.feed("rd1!") == "***!"
    assert masker.feed("no secret here") == "no secret here"
    assert masker.flush() == ""


def test_a_value_that_starts_another_and_self_overlapping_values():
    assert masked(["abcd", "abcdef"], ["x abcd", "ef y"]) == "x *** y"
    assert masked(["abcd", "abcdef"], ["x abcd", " y"]) == "x *** y"
    assert masked(["abab"], ["ab", "ab"]) == "***"
    assert masked(["abab"], ["aba", "bab"]) == "***ab"
    assert masked(["aaaa"], ["aaaaaaa", "a"]) == "******"


def test_short_values_are_not_masked_and_no_values_pass_through():
    short = "x" * (MIN_LENGTH - 1)
    assert masked([short, ""], [f"a {short} b"]) == f"a {short} b"
    assert not Masker([short])
    assert masked([], ["as is"]) == "as is"


def test_chunked_masking_equals_masking_the_whole_text():
    rng = random.Random(7)
    for _ in range(400):
        values = ["".join(rng.choice("ab") for _ in range(rng.randint(3, 7)))
                  for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert masked(values, chunks) == reference(values, text), (values, chunks)


def test_output_masks_per_instance_and_stream():
    masks = OutputMasks()
    masks.register("i1", ["topsecret", "no"])
    assert masks.feed("i1", "stdout", "a topsec") == "a "
    assert masks.feed("i1", "stderr", "top") == ""
    assert masks.feed("i1", "stdout", "ret b") == "*** b"
    assert masks.feed("i2", "stdout", "topsecret") == "topsecret"  # not registered
    assert masks.finish("i1") == {"stderr": "top"}
    assert masks.feed("i1", "stdout", "topsecret") == "topsecret"  # forgotten
    masks.register("i3", ["abc"])  # too short: nothing to keep
    assert len(masks) == 0


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_held_back_tail_stays_short(size):
    masker = Masker(["0123456789-secret"])
    out = "".join(masker.feed("0123456789-" * size) for _ in range(3))
    assert len("0123456789-" * size * 3) - len(out) < len("0123456789-secret")
