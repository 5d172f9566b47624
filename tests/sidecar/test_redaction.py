"""The log redaction the server and the sidecar share (elido_common/redaction.py)."""

from elido_common.redaction import redact_secrets, scrub


def test_scrub_masks_emails_and_removes_keys_and_tokens() -> None:
    text = scrub(
        "to secret.person@example.com via https://x.example/p?email=hidden.one%40example.org&a=1"
        " key pk_abcdefgh12345678 Authorization: Bearer abc.def-ghi"
        " token hvs.AAAAAAAAAAAAAAAAAAAAAAAA"
    )
    assert "secret.person" not in text
    assert "s***@example.com" in text
    assert "hidden.one" not in text
    assert "h***%40example.org&a=1" in text
    assert "pk_abcdefgh12345678" not in text
    assert "pk_…5678" in text
    assert "Bearer [REDACTED]" in text
    assert "hvs." not in text


def test_processor_redacts_every_field_and_secret_names() -> None:
    event = redact_secrets(
        None,
        "warning",
        {
            "event": "input_skipped",
            "line_prefix": '{"email": "ann@example.com"',
            "token": "anything at all",
            "nested": {"private_key": "x", "list": ["bob@example.org", 3, None]},
        },
    )
    assert event == {
        "event": "input_skipped",
        "line_prefix": '{"email": "a***@example.com"',
        "token": "[REDACTED]",
        "nested": {"private_key": "[REDACTED]", "list": ["b***@example.org", 3, None]},
    }
