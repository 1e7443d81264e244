"""The one sanitiser (errors.sanitize) and the one masker (pop3.masking.Secrets)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetchpop.errors import AuthError, ServerError, sanitize
from fetchpop.pop3.masking import Secrets
from fetchpop.pop3.protocol import POP3Protocol, Reply

SECRET = "Pw-7x!Qz9kL#t"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (b"\x1b[2Jx\x07", "?[2Jx?"),
        (b"csi \xc2\x9b31m", "csi ?31m"),  # C1
        ("rlo \u202eexe.txt\u202c", "rlo ?exe.txt?"),  # Trojan Source
        ("isolate \u2066x\u2069 mark \u200f", "isolate ?x? mark ?"),
        ("two\u2028lines\u2029", "two?lines?"),  # splitlines() would break there
        (b"bad \xff\xfe utf-8", "bad \ufffd\ufffd utf-8"),
        ("lone \ud800 surrogate", "lone ? surrogate"),
        ("tab\tstays, del\x7f goes", "tab\tstays, del? goes"),
    ],
)
def test_sanitize(text: str | bytes, shown: str) -> None:
    assert sanitize(text) == shown


def test_sanitize_cuts_long_text() -> None:
    assert sanitize("x" * 10, 4) == "xxxx..."


def secrets(*values: str) -> Secrets:
    out = Secrets()
    out.add(*values)
    return out


def test_the_secret_and_its_base64_are_hidden() -> None:
    hide = secrets(SECRET).hide
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert hide(f"-ERR bad {SECRET} ({encoded})") == "-ERR bad *** (***)"


@pytest.mark.parametrize("before", ["", "x", "xy", "xyz", "\0alice\0"])
def test_the_secret_inside_a_longer_base64_string_is_hidden(before: str) -> None:
    """What stands for the secret alone goes, wherever it sits in the string."""
    encoded = base64.b64encode((before + SECRET + "tail").encode()).decode()
    shown = secrets(SECRET).hide(encoded)
    assert "***" in shown
    for shift in range(3):
        # The characters that stand for the secret's bytes alone, at this
        # alignment: no 4 of them (3 bytes of the secret) may show.
        alone = base64.b64encode(b"\0" * shift + SECRET.encode()).decode()
        core = alone[-(-4 * shift // 3) : 4 * (shift + len(SECRET)) // 3]
        assert not any(core[i : i + 4] in shown for i in range(len(core) - 3)), shown


def test_what_sanitize_shows_of_a_secret_is_hidden_too() -> None:
    odd = "pass\x1bword"
    assert secrets(odd).hide("-ERR " + sanitize(odd)) == "-ERR ***"


def test_sasl_responses_as_sent_are_hidden() -> None:
    masker = Secrets()
    response = base64.b64encode(b"\0alice\0" + SECRET.encode())
    masker.add_sent(response)
    assert masker.hide(f"-ERR got {response.decode()}") == "-ERR got ***"


def test_a_short_secret_is_not_hidden() -> None:
    assert secrets("abc").hide("abc") == "abc"
    assert not secrets("abc")


def test_show_hides_before_it_cuts() -> None:
    text = "u" * 10 + SECRET
    assert secrets(SECRET).show(text, 14) == "u" * 10 + "***"


def test_scrub_hides_the_start_of_a_secret_cut_short() -> None:
    exc = ServerError("login refused: " + sanitize("x" + SECRET, 5), words="-ERR " + SECRET)
    exc.__cause__ = AuthError("said " + SECRET)
    secrets(SECRET).scrub(exc)
    assert str(exc) == "login refused: x***..."
    assert exc.words == "-ERR ***"
    assert str(exc.__cause__) == "said ***"


def test_secrets_have_no_repr_of_them() -> None:
    assert SECRET not in repr(secrets(SECRET))


def test_the_protocol_hides_what_it_sent() -> None:
    """PASS's argument, APOP's digest, AUTH's initial response, SASL responses."""
    p = POP3Protocol()
    p.receive_data(b"+OK hi\r\n")
    p.next_event()
    p.send("PASS", SECRET)
    p.receive_data(b"-ERR [AUTH] " + SECRET.encode() + b" is wrong\r\n")
    assert p.next_event() == Reply("PASS", False, b"[AUTH] *** is wrong", "AUTH")
    p.send("AUTH", "PLAIN", "AGFsaWNlAHNlY3JldA==")
    p.receive_data(b"-ERR AGFsaWNlAHNlY3JldA==\r\n")
    assert p.next_event() == Reply("AUTH", False, b"***")


@given(st.binary(max_size=200))
def test_parsed_text_is_always_safe(text: bytes) -> None:
    p = POP3Protocol()
    p.receive_data(b"+OK " + text.replace(b"\n", b"") + b"\r\n")
    event = p.next_event()
    shown = event.text.decode("utf-8")  # type: ignore[union-attr]
    assert shown == sanitize(shown, len(shown))
