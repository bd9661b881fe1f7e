"""esikit._validation: one message shape for every argument check."""

from __future__ import annotations

import numpy as np
import pytest

from esikit._validation import check_option, check_positive_int, format_indices, option_message


def test_check_option_returns_the_value_or_names_name_options_and_value():
    assert check_option("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^Invalid value for 'mode': expected one of 'a', 'b', got 'c'\.$"):
        check_option("mode", "c", ("a", "b"))
    assert option_message("mode", "c", ["a", "b"]) == "Invalid value for 'mode': expected one of 'a', 'b', got 'c'."


def test_a_bool_is_not_an_int_option_and_arrays_do_not_crash():
    assert check_option("flag", True, (True, False, "bf16")) is True
    with pytest.raises(ValueError, match="got 1"):
        check_option("flag", 1, (True, False))
    with pytest.raises(ValueError, match="got True"):
        check_option("n", True, (1, 2))
    with pytest.raises(ValueError, match="'x'"):
        check_option("arr", np.arange(3), ("x",))


def test_check_positive_int():
    assert check_positive_int("n", np.int64(3)) == 3
    assert check_positive_int("n", None, allow_none=True) is None
    for bad in (0, True, 2.5, "3"):
        with pytest.raises(ValueError, match=r"Invalid value for 'n': expected an integer >= 1"):
            check_positive_int("n", bad)
    assert check_positive_int("n", 0, minimum=0) == 0


def test_format_indices():
    assert format_indices([1, 2]) == "1, 2"
    assert format_indices(range(8), limit=3) == "0, 1, 2 and 5 more"


def test_format_duration_and_bytes():
    from esikit._validation import format_bytes, format_duration

    assert [format_duration(s) for s in (45, 600, 5 * 3600, 4 * 86400)] == ["45 s", "10 min", "5.0 h", "4.0 days"]
    assert [format_bytes(n) for n in (512, 3.2e6, 1.5e12, 2e15)] == ["512.0 B", "3.2 MB", "1.5 TB", "2000.0 TB"]
