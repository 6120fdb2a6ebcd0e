import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlm.bits.frames import (
    BitDecodeError, as_bit_array, bits_to_bytes, bits_to_text, bytes_to_bits, decode_bits, format_bits,
    frame_bits, parity_of, parse_bit_string, text_to_bits,
)

SAMPLES = ["", "a", "hello world", "héllo wörld", "日本語のテキスト", "emoji 🎉🧮 mix", "\x00\x7f\n\t"]


def bits(s: str) -> torch.Tensor:
    return parse_bit_string(s)


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("parity", [True, False])
def test_round_trip(text, parity):
    b = text_to_bits(text, parity)
    assert b.dtype == torch.uint8 and b.dim() == 1
    assert b.numel() == len(text.encode()) * frame_bits(parity)
    assert bits_to_text(b, parity) == text
    assert bits_to_text(b.bool(), parity) == text
    r = decode_bits(b, parity)
    assert (r.text, r.ok, r.parity_errors, r.replaced, r.changed) == (text, True, 0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.booleans())
def test_round_trip_any_text(text, parity):
    assert bits_to_text(text_to_bits(text, parity), parity) == text


def test_frame_layout_msb_first_even_parity():
    assert text_to_bits("A").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0]         # 0x41: two ones -> parity 0
    assert text_to_bits("C").tolist() == [0, 1, 0, 0, 0, 0, 1, 1, 1]         # 0x43: three ones -> parity 1
    assert text_to_bits("C", parity=False).tolist() == [0, 1, 0, 0, 0, 0, 1, 1]
    frames = text_to_bits("any text, ünïcödé").view(-1, 9)
    assert (frames.sum(1) % 2 == 0).all()
    assert torch.equal(parity_of(frames[:, :8]), frames[:, 8])


def test_parity_of_shapes():
    x = torch.randint(0, 2, (3, 5, 8))
    assert torch.equal(parity_of(x), (x.sum(-1) % 2).to(torch.uint8))
    with pytest.raises(ValueError, match="8"):
        parity_of(torch.zeros(4, 9))


def test_bytes_round_trip_all_values():
    data = bytes(range(256))
    for parity in (True, False):
        assert bits_to_bytes(bytes_to_bits(data, parity), parity) == data


def test_strict_wrong_length_names_index():
    b = text_to_bits("abc")[:-4]
    with pytest.raises(BitDecodeError) as e:
        bits_to_text(b)
    assert e.value.index == 2 and "wrong length" in e.value.reason and "23 bits" in e.value.reason
    with pytest.raises(BitDecodeError, match="byte 2: wrong length"):
        bits_to_bytes(b)


def test_strict_parity_error_names_index():
    b = text_to_bits("hello").clone()
    b[3 * 9 + 4] ^= 1  # a data bit of byte 3
    with pytest.raises(BitDecodeError) as e:
        bits_to_text(b)
    assert e.value.index == 3 and "parity" in e.value.reason
    assert isinstance(e.value, ValueError)
    b = text_to_bits("hello").clone()
    b[1 * 9 + 8] ^= 1  # the parity bit of byte 1
    with pytest.raises(BitDecodeError) as e:
        bits_to_bytes(b)
    assert e.value.index == 1


def test_strict_invalid_utf8_names_index():
    with pytest.raises(BitDecodeError) as e:
        bits_to_text(bytes_to_bits(b"ab\xffcd"))
    assert e.value.index == 2 and "invalid UTF-8" in e.value.reason
    with pytest.raises(BitDecodeError) as e:  # a multi-byte character cut short at the end
        bits_to_text(bytes_to_bits("xé".encode()[:-1], parity=False), parity=False)
    assert e.value.index == 1 and "UTF-8" in e.value.reason


def test_strict_reports_the_earliest_problem():
    good = bytes_to_bits("a€b".encode())
    b = torch.cat([bytes_to_bits(b"\xff"), good])
    b[9 + 3] ^= 1  # parity error at byte 1, invalid UTF-8 at byte 0
    with pytest.raises(BitDecodeError) as e:
        bits_to_text(b)
    assert e.value.index == 0 and "UTF-8" in e.value.reason
    b = good.clone()
    b[9 + 2] ^= 1  # parity error inside the 3-byte euro sign: the incomplete sequence is not blamed
    with pytest.raises(BitDecodeError) as e:
        bits_to_text(b)
    assert e.value.index == 1 and "parity" in e.value.reason


def test_lenient_repairs_parity_trusting_data_bits():
    b = text_to_bits("hello").clone()
    b[8] ^= 1
    b[2 * 9 + 8] ^= 1
    r = decode_bits(b)
    assert r.text == "hello" and not r.ok
    assert (r.parity_errors, r.replaced, r.changed) == (2, 0, 2)
    assert "parity" in r.message
    assert bits_to_text(b, errors="replace") == "hello"
    assert bits_to_bytes(b, errors="replace") == b"hello"


def test_lenient_replaces_undecodable_bytes():
    r = decode_bits(bytes_to_bits(b"ok\xff\xfe!" + "é".encode()))
    assert r.text == "ok\ufffd\ufffd!é"
    assert (r.parity_errors, r.replaced, r.changed) == (0, 2, 2)
    assert "U+FFFD" in r.message


def test_lenient_counts_a_byte_with_both_problems_once():
    b = bytes_to_bits(b"a\xffb").clone()
    b[9 + 8] ^= 1  # parity bit of the 0xff byte, which is also invalid UTF-8
    r = decode_bits(b)
    assert r.text == "a\ufffdb"
    assert (r.parity_errors, r.replaced, r.changed) == (1, 1, 1)


def test_lenient_trailing_partial_frame():
    b = torch.cat([text_to_bits("hi"), torch.tensor([1, 0, 1], dtype=torch.uint8)])
    r = decode_bits(b)
    assert r.text == "hi\ufffd" and (r.replaced, r.changed) == (1, 1) and "3 bits" in r.message
    assert bits_to_bytes(b, errors="replace") == b"hi"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=400), st.booleans())
def test_lenient_never_raises_on_bits(values, parity):
    r = decode_bits(torch.tensor(values, dtype=torch.uint8), parity)
    fb = frame_bits(parity)
    assert len(r.text.encode("utf-8", "surrogatepass")) <= len(values) // fb * 3 + 3
    assert r.ok == (r.changed == 0) and r.changed <= len(values) // fb + 1
    if r.ok:
        assert bits_to_text(torch.tensor(values, dtype=torch.uint8), parity) == r.text


def test_errors_argument_checked():
    with pytest.raises(ValueError, match="errors"):
        bits_to_text(text_to_bits("x"), errors="ignore")


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 2, 1]), "found 2 at index 1"),
    (torch.tensor([0.0, 1.0]), "dtype"),
    (torch.zeros(2, 9, dtype=torch.uint8), "1-D"),
    ([0, 1], "torch.Tensor"),
])
def test_non_bits_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        as_bit_array(bad)
    with pytest.raises(ValueError, match=match):
        decode_bits(bad)


def test_as_bit_array_accepts_bool_and_int_dtypes():
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64):
        assert as_bit_array(torch.tensor([1, 0, 1]).to(dtype)).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="-1 at index 0"):
        as_bit_array(torch.tensor([-1, 0]))


def test_parse_bit_string():
    assert bits("0100_0001 0\n\t1\r\n").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0, 1]
    assert bits("").numel() == 0 and bits("").dtype == torch.uint8


@pytest.mark.parametrize("s, char, pos", [("0101x01", "'x'", 4), ("01\n01 2", "'2'", 6), ("é", "'é'", 0)])
def test_parse_errors_name_char_and_position(s, char, pos):
    with pytest.raises(ValueError) as e:
        parse_bit_string(s)
    assert f"invalid character {char} at position {pos}" in str(e.value)


def test_parse_error_gives_line_and_column():
    with pytest.raises(ValueError, match=r"line 2, column 3"):
        parse_bit_string("0101\n01a")


def test_format_bits():
    b = text_to_bits("AB")
    assert format_bits(b) == "010000010 010000100"
    assert format_bits(b, group=4, groups_per_line=2) == "0100 0001\n0010 0001\n00"
    assert format_bits(torch.zeros(0, dtype=torch.uint8)) == ""
    with pytest.raises(ValueError, match="group"):
        format_bits(b, group=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=300), st.integers(1, 12), st.integers(1, 10))
def test_format_parse_round_trip(values, group, per_line):
    b = torch.tensor(values, dtype=torch.uint8)
    assert torch.equal(parse_bit_string(format_bits(b, group, per_line)), b)
