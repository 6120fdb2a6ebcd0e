"""NGramDraft: the longest known context's most frequent next byte, as patterns of the model's patches."""
import pytest

from bitlm.generate.draft import NGramDraft


def frame(b: int) -> int:
    return (b << 1) | (bin(b).count("1") & 1)


def test_the_longest_context_and_its_most_frequent_next_byte_win():
    draft = NGramDraft(b"abcX abcX abcY zbcY zbcY", max_order=3, parity=False)
    assert draft.next_byte(list(b"abc")) == ord("X")      # "abc": X twice, Y once; beats "bc" (X 2, Y 3)
    assert draft.next_byte(list(b"zbc")) == ord("Y")
    assert draft.next_byte(list(b"qbc")) == ord("Y")      # "qbc" unknown: falls back to "bc"
    assert draft.next_byte([]) == ord("b")               # no context: the most frequent byte (ties: lowest)
    assert draft.next_byte(list(b"\x00")) == ord("b")    # unknown byte


def test_guesses_are_patterns_and_chain_on_earlier_guesses():
    text = "the cat sat on the mat. " * 5
    draft = NGramDraft(text, max_order=4, parity=True)
    history = [frame(b) for b in b"the c"]
    assert draft.guess(history, 5) == [frame(b) for b in b"at sa"]
    plain = NGramDraft(text, max_order=4, parity=False)
    assert plain.guess(list(b"the c"), 3) == list(b"at ")


@pytest.mark.parametrize("text,order", [("", 6), ("abc", 6), ("abcdefghij", 0), ("abcdefghij", 8)])
def test_bad_arguments_are_refused(text, order):
    with pytest.raises(ValueError):
        NGramDraft(text, max_order=order)
