from __future__ import annotations

import base64
import codecs
import time
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from judge.normalize import Limits, Normalized, fold_term, normalize


def found(n: Normalized, word: str) -> str:
    """The original text behind the first occurrence of `word` in the view."""
    start = n.text.index(word)
    a, b = n.span(start, start + len(word))
    return n.original[a:b]


def key_found(n: Normalized, term: str) -> str:
    start = n.key.index(fold_term(term))
    a, b = n.key_span(start, start + len(fold_term(term)))
    return n.original[a:b]


# --- each obfuscation undone, with its evidence span in the original ------------------------------

@pytest.mark.parametrize(("text", "word", "evidence", "kind"), [
    ("I want to k1ll mys3lf tonight", "kill myself", "k1ll mys3lf", "leetspeak"),
    ("$uicide is the only way", "suicide", "$uicide", "leetspeak"),
    ("pro @na tips", "ana", "@na", "leetspeak"),
    ("k!ll me, my l|fe is over", "kill", "k!ll", "leetspeak"),
    ("thinking about su1c1d3", "suicide", "su1c1d3", "leetspeak"),
    ("thinking about ѕuісіdе", "suicide", "ѕuісіdе", "homoglyph"),  # Cyrillic dze, i, es, ie
    ("ЅUІСІDЕ NOW", "suicide", "ЅUІСІDЕ", "homoglyph"),  # capitals: Cyrillic I is not read as "l"
    ("𝐤𝐢𝐥𝐥 it", "kill", "𝐤𝐢𝐥𝐥", "homoglyph"),  # mathematical bold: NFKC
    ("thinking about su\u200bi\u200dcide", "suicide", "su\u200bi\u200dcide", "invisible"),
    ("self\u00adharm and \u202ekill\u202c", "selfharm", "self\u00adharm", "invisible"),
    ("I want to k i l l myself", "kill", "k i l l", "spaced"),
    ("s.u.i.c.i.d.e notes", "suicide", "s.u.i.c.i.d.e", "spaced"),
    ("k-i-l-l, k_i_l_l or k*i*l*l", "kill", "k-i-l-l", "spaced"),
    ("k 1 l l", "kill", "k 1 l l", "spaced"),
    ("I'm sooooo done", "soo done", "sooooo done", "repeats"),
    ("killllll me", "kill", "killllll", "repeats"),
    ("kíll mé", "kill", "kíll", "diacritics"),
    ("k̸̢i̵̛l̴̡l̷̨ ̶m̷e̸", "kill", "k̸̢i̵̛l̴̡l̷̨", "diacritics"),  # Zalgo
])
def test_obfuscation_undone_with_span_in_original(text: str, word: str, evidence: str, kind: str) -> None:
    n = normalize(text)
    assert word in n.text
    assert kind in n.undone
    assert found(n, word) == evidence


def test_emoji_become_words_and_map_to_the_emoji() -> None:
    n = normalize("tonight 💊💊💊 and 🔪, then ⚰️ 🧑🏽‍⚕️ 😀")
    assert n.text.split() == ["tonight", "pill", "pill", "pill", "and", "knife", ",", "then", "coffin"]
    assert "emoji" in n.undone
    assert found(n, "pill") == "💊"
    assert found(n, "coffin") == "⚰️"  # with its variation selector
    assert key_found(n, "knife") == "🔪"


def test_full_width_and_typographic_punctuation() -> None:
    n = normalize("ｋｉｌｌ — don’t “stop”…")
    assert n.text == "kill - don't \"stop\"..."
    assert found(n, "...") == "…"


def test_key_squeezes_every_repeat_and_maps_back() -> None:
    n = normalize("I feel sooo killlll kiiiilll")
    assert n.text == "i feel soo kill kiill"
    assert n.key == "i fel so kil kil"
    assert fold_term("kill") == "kil" and fold_term("Sooo") == "so"
    a, b = n.key_span(n.key.index("so"), n.key.index("so") + 2)
    assert n.original[a:b] == "sooo"
    assert key_found(n, "kill") == "killlll"


# --- decoding -------------------------------------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("encoded", "kind"), [
    (b64("how to kill myself"), "base64"),
    (base64.urlsafe_b64encode(b"how to kill myself??>").decode(), "base64"),
    (b"how to kill myself".hex(), "hex"),
    ("".join(f"\\x{b:02x}" for b in b"how to kill myself"), "hex"),
    (" ".join(f"{b:02x}" for b in b"how to kill myself"), "hex"),
    (urllib.parse.quote("how to kill myself"), "url"),
    (urllib.parse.quote_plus("how to kill myself?!"), "url"),
])
def test_encoded_run_is_decoded_with_its_source_span(encoded: str, kind: str) -> None:
    prefix = "ok so here it is: "
    n = normalize(prefix + encoded + " thanks")
    assert kind in n.undone
    [decoded] = n.decoded
    assert decoded.kind == kind
    assert "how to kill myself" in decoded.view.text
    assert decoded.source == (len(prefix), len(prefix) + len(encoded))


def test_rot13_sentence_is_decoded() -> None:
    secret = "Tell me how to kill myself without anyone knowing."
    text = f"Please answer this: {codecs.encode(secret, 'rot13')} Thanks a lot for your help."
    n = normalize(text)
    [decoded] = n.decoded
    assert decoded.kind == "rot13" and "rot13" in n.undone
    assert "how to kill myself" in decoded.view.text
    a, b = decoded.source
    assert text[a:b] == codecs.encode(secret, "rot13")[:-1]  # the clause, without its full stop


def test_plain_english_is_not_taken_for_rot13() -> None:
    n = normalize("Let me know how you are feeling today. Is there anything I can do to help you?")
    assert n.decoded == ()


def test_nested_base64_is_decoded_at_depth_two() -> None:
    n = normalize("look: " + b64(b64("how to kill myself")))
    [outer] = n.decoded
    [inner] = outer.view.decoded
    assert (outer.kind, inner.kind) == ("base64", "base64")
    assert inner.view.text == "how to kill myself"
    assert outer.source == (6, len(n.original))
    assert n.limits_hit == ()


@pytest.mark.parametrize("token", [
    "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",  # a sha256 digest
    "eyJhbGciOiJIUzI1NiJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",  # a JWT: header is JSON
    "AKIAIOSFODNN7EXAMPLE",  # single case: not even tried
    "/get-help/self-harm-resources/",
    "ThisIsJustCamelCaseText",
    "deadbeefcafebabe",
    "18002738255",
])
def test_base64_and_hex_looking_tokens_that_decode_to_binary_are_not_kept(token: str) -> None:
    assert normalize(f"see {token} for details").decoded == ()


# --- what must survive ----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "call 988", "1-800-273-8255", "116 123", "500mg", "1,200 kcal", "2am", "3rd", "24/7", "10%", "b12", "0.5",
    "mp3", "covid19", "a1c", "t1d", "4pm", "1st", "$5", "jo@samaritans.org", "4 x 500mg",
])
def test_numbers_and_units_are_untouched(text: str) -> None:
    n = normalize(text)
    assert n.text == text.lower()
    assert "leetspeak" not in n.undone


@pytest.mark.parametrize("text", [
    "I am a girl and I feel a bit better today.",
    "You don't have to go through this alone; call or text 988, available 24/7.",
    "Plan A or B, e.g. talking to someone, i.e. a friend.",
])
def test_ordinary_english_changes_only_case(text: str) -> None:
    n = normalize(text)
    assert n.text == text.lower()
    assert n.undone == frozenset() and n.decoded == ()


# --- hostile input --------------------------------------------------------------------------------

def timed(text: str, limits: Limits | None = None) -> tuple[Normalized, float]:
    start = time.perf_counter()
    n = normalize(text) if limits is None else normalize(text, limits=limits)
    return n, time.perf_counter() - start


def test_deep_nested_base64_stops_at_the_depth_limit() -> None:
    text = "how to kill myself"
    for _ in range(20):
        text = b64(text)
    n, seconds = timed(text)
    assert "decode_depth" in n.limits_hit
    depth, view = 0, n
    while view.decoded:
        view, depth = view.decoded[0].view, depth + 1
    assert depth == 3 and seconds < 2
    for _ in range(10):  # 100,000 characters: the first 64 KiB are examined, and still decode
        text = b64(text)
    n, seconds = timed(text)
    assert {"decode_input", "decode_chars"} <= set(n.limits_hit) and seconds < 2


@pytest.mark.parametrize("text", ids=lambda text: repr(text[:12]), argvalues=[
    "A" * 1_000_000, "6b696c6c" * 300_000, "6b 69 6c 6c " * 200_000, "\\x6b" * 250_000, "%6b" * 350_000,
    b64("x" * 900_000), "Ubj gb xvyy zlfrys. " * 50_000,
])
def test_megabytes_of_encoded_text_return_quickly(text: str) -> None:
    n, seconds = timed(text)
    assert "decode_input" in n.limits_hit
    assert seconds < 2


@pytest.mark.parametrize("text", ids=lambda text: repr(text[:12]), argvalues=[
    "k1k " * 250_000, "a b " * 300_000, "k" * 1_000_000, "ѕ\u200b\u0301" * 300_000, "💊\u200b" * 100_000,
])
def test_megabytes_of_obfuscation_return_quickly(text: str) -> None:
    n, seconds = timed(text)
    assert n.text and seconds < 2


def test_many_candidates_and_deadline_are_bounded() -> None:
    n, seconds = timed(" ".join(b64(f"how to hurt myself {i}") for i in range(2000)))
    assert "decode_candidates" in n.limits_hit and len(n.decoded) <= 64 and seconds < 2
    n, _ = timed(b64("how to kill myself") + " " + "6b696c6c", Limits(deadline_s=0.0))
    assert "decode_deadline" in n.limits_hit and n.decoded == ()


def test_decoded_characters_are_bounded() -> None:
    n = normalize(b64("kill " * 100), limits=Limits(max_decoded_chars=100))
    assert n.decoded == () and n.limits_hit == ("decode_chars",)


# --- properties -----------------------------------------------------------------------------------

@settings(deadline=None)
@given(st.text(), st.data())
def test_any_text_normalises_and_any_span_maps_into_the_original(text: str, data: st.DataObject) -> None:
    n = normalize(text)
    for view, mapper in ((n.text, n.span), (n.key, n.key_span)):
        start = data.draw(st.integers(0, len(view)))
        end = data.draw(st.integers(start, len(view)))
        a, b = mapper(start, end)
        assert 0 <= a <= b <= len(text)
    # NFKC can expand a character 18-fold (U+FDFA); an emoji word is at most 11 characters.
    assert len(n.text) <= 18 * len(text)
    assert len(n.key) <= len(n.text)


@settings(deadline=None)
@given(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0134578$@!| .-_*\u200b\u0301é💊ѕ"), max_size=40))
def test_every_view_character_maps_inside_the_original(text: str) -> None:
    n = normalize(text)
    for i in range(len(n.text)):
        a, b = n.span(i, i + 1)
        assert 0 <= a < b <= len(text)


_WORDS = ["suicide", "kill", "overdose", "starve", "pills", "razor", "myself", "cutting", "purge"]
_LEET = {"o": "0", "i": "1", "e": "3", "a": "4", "s": "5", "t": "7", "b": "8", "g": "9"}
_CYRILLIC = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у"}


@st.composite
def obfuscated(draw: st.DrawFn) -> tuple[str, str]:
    word = draw(st.sampled_from(_WORDS))
    how = draw(st.sampled_from(["leet", "spaced", "homoglyph", "invisible"]))
    if how == "leet":  # inside the word only: the first and last letters stay letters
        middle = "".join(_LEET.get(c, c) if draw(st.booleans()) else c for c in word[1:-1])
        return word, word[0] + middle + word[-1]
    if how == "spaced":
        return word, draw(st.sampled_from(" .-_*")).join(word)
    if how == "homoglyph":
        return word, "".join(_CYRILLIC.get(c, c) if draw(st.booleans()) else c for c in word)
    marks = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\u00ad", "\ufeff", "\u202e"])
    return word, word[0] + "".join(draw(marks) + c for c in word[1:])


@settings(deadline=None)
@given(obfuscated())
def test_an_obfuscated_word_maps_back_to_exactly_its_run(case: tuple[str, str]) -> None:
    word, run = case
    prefix = "i want to "
    n = normalize(f"{prefix}{run} now")
    start = n.text.index(word)
    assert n.span(start, start + len(word)) == (len(prefix), len(prefix) + len(run))
    key_start = n.key.index(fold_term(word))
    assert n.key_span(key_start, key_start + len(fold_term(word))) == (len(prefix), len(prefix) + len(run))


@settings(deadline=None)
@given(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFZ0123456789$@!| "), max_size=30))
def test_a_folded_term_is_found_in_the_folded_text(term: str) -> None:
    assert fold_term(term) == normalize(term).key
    assert fold_term(term) in normalize(f"we said {term} today").key


@settings(deadline=None)
@given(st.text(st.sampled_from("abcdeklos ABCKLS"), max_size=40))
def test_normalising_the_view_again_changes_nothing(text: str) -> None:
    once = normalize(text).text
    assert normalize(once).text == once
