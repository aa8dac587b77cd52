import pytest

from autotune.errors import UserError
from autotune.units import format_bytes, format_duration, parse_bytes, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GB", 16 * 10**9),
        ("16gb", 16 * 10**9),
        ("16GiB", 16 * 2**30),
        ("16gib", 16 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
        ("2e9", 2 * 10**9),
        (" 8 MB ", 8 * 10**6),
        (1024, 1024),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["16XB", "-1GB", "0", "GB", "", "16 G B", "nan", True])
def test_parse_bytes_rejects_with_flag_name(text):
    with pytest.raises(UserError, match="--budget"):
        parse_bytes(text)


def test_parse_bytes_error_offers_the_units():
    with pytest.raises(UserError) as info:
        parse_bytes("16XB")
    assert "'XB'" in str(info.value) and "GiB" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("300", 300), ("90s", 90), ("5m", 300), ("5min", 300), ("1h", 3600), ("1h30m", 5400),
     ("1.5h", 5400), (45, 45)],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5x", "-5m", "0", "m", "five"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_formatting():
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_duration(None) == "-"
    assert format_duration(12.34) == "12.3s"
    assert format_duration(245) == "4m05s"
