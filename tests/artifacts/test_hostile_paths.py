"""Hostile file names in the predictions artifact: any bytes a file system allows are written to a
UTF-8 CSV and read back exactly (``escape_path``, ``unescape_path``)."""

from __future__ import annotations

import os

import pytest

from cxr.artifacts import escape_path, unescape_path

# escaped paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a,b\\c", "x\\xe9y", "plain/name.png", "tr\\\\xail\\"])
def test_escaped_paths_round_trip(text: str) -> None:
    assert escape_path(unescape_path(text)) == text or "\\" in text


def test_property_escape_round_trips_any_bytes() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b))
    def check(raw: bytes) -> None:
        text = escape_path(os.fsdecode(raw))
        text.encode("utf-8")  # always fits a UTF-8 CSV
        assert os.fsencode(unescape_path(text)) == raw

    check()
