"""Join tokens (pilot/bootstrap.py): one identity, an expiry, an HMAC of the join secret;
anything else about a token is refused with the reason."""

from __future__ import annotations

import pytest

from sofamesh.pilot.bootstrap import TokenError, load_secret, make_token, verify_token

SECRET = bytes(range(32))


def test_a_token_names_its_identity_until_it_expires():
    t = make_token(SECRET, "mesh.test", "prod", "reviews", ttl=60, now=1000.0)
    assert t.startswith("smj1.") and t.count(".") == 2
    assert verify_token(SECRET, t, "mesh.test", now=1059.0) == ("prod", "reviews")
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, t, "mesh.test", now=1061.0)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("smj1.", "smj2.", 1), "not a join token"),
        (lambda t: t + "x", "signature"),
        (
            lambda t: t.split(".")[0] + "." + t.split(".")[1][:-2] + "AA." + t.split(".")[2],
            "signature",
        ),
        (lambda t: "smj1.only-two", "not a join token"),
        (lambda t: "", "not a join token"),
    ],
)
def test_altered_tokens_are_refused(mutate, reason):
    t = make_token(SECRET, "mesh.test", "default", "a", now=1000.0)
    with pytest.raises(TokenError, match=reason):
        verify_token(SECRET, mutate(t), "mesh.test", now=1000.0)


def test_another_secret_or_trust_domain():
    t = make_token(SECRET, "mesh.test", "default", "a", now=1000.0)
    with pytest.raises(TokenError, match="signature"):
        verify_token(b"y" * 32, t, "mesh.test", now=1000.0)
    with pytest.raises(TokenError, match="trust domain"):
        verify_token(SECRET, t, "other.test", now=1000.0)


def test_names_that_make_no_identity_are_refused_when_minted():
    with pytest.raises(ValueError):
        make_token(SECRET, "mesh.test", "default", "a/b")


def test_secret_files(tmp_path):
    (tmp_path / "hex").write_text(SECRET.hex() + "\n")
    assert load_secret(str(tmp_path / "hex")) == SECRET
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load_secret(str(tmp_path / "short"))
