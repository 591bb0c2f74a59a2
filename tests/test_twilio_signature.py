"""Twilio request signatures: the reference vectors, agreement with Twilio's own SDK, and refusals."""

from __future__ import annotations

import pytest

from transports.telephony import twilio_signature as signature

TOKEN = "0123456789abcdef0123456789abcdef"
VOICE_URL = "https://bot.example.com/twilio/voice"
VOICE_PARAMS = {
    "AccountSid": "AC" + "a" * 32,
    "ApiVersion": "2010-04-01",
    "CallSid": "CA" + "b" * 32,
    "CallStatus": "ringing",
    "Direction": "inbound",
    "From": "+15551230001",
    "To": "+15559870002",
}
V1_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
V1_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
JSON_URL = (
    "https://bot.example.com/twilio/events"
    "?bodySHA256=7be7ef15405a070759439234b1431f7e8435071ed72dc35fa03fcce0c70b7999"
)
JSON_BODY = '{"event":"test","value":1}'


@pytest.mark.parametrize(
    ("token", "url", "params", "algorithm", "expected"),
    [
        (
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            V1_PARAMS,
            "HMAC_SHA1",
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        ),
        (TOKEN, VOICE_URL, VOICE_PARAMS, "HMAC_SHA1", "Aq3J4ARZrNrpTIMITgDjappXE/k="),
        (TOKEN, "wss://bot.example.com/twilio/media", None, "HMAC_SHA1", "jv31GfTxPUcTBiKdnswIUT4zC/0="),
        (TOKEN, JSON_URL, None, "HMAC_SHA1", "9ta/cTxr+erxi4hAHxE7E9UzXTA="),
        (TOKEN, VOICE_URL, VOICE_PARAMS, "HMAC_SHA256", "FAioBpLRNuAH73ZW1uToZq7TBXqL0LEQWWt1q0fLjjM="),
    ],
    ids=["V1", "V2", "V3", "V4", "V5"],
)
def test_reference_vectors(
    token: str, url: str, params: dict[str, str] | None, algorithm: str, expected: str
) -> None:
    assert signature.compute(token, url, params, algorithm) == expected  # type: ignore[arg-type]
    body = JSON_BODY if url == JSON_URL else params
    assert signature.validate(token, url, body, expected, algorithm)  # type: ignore[arg-type]


def test_signed_string_is_the_reference_one() -> None:
    assert signature.signed_string(VOICE_URL, VOICE_PARAMS) == (
        "https://bot.example.com/twilio/voiceAccountSidACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaApiVersion2010-04-01"
        "CallSidCAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbCallStatusringingDirectioninboundFrom+15551230001To+15559870002"
    )


def test_agrees_with_twilios_sdk() -> None:
    from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

    sdk = RequestValidator(TOKEN)
    cases: list[tuple[str, dict[str, str]]] = [
        (VOICE_URL, VOICE_PARAMS),
        ("https://bot.example.com:8443/twilio/voice?x=1", {"B": "1", "a": "2", "b": "é ü +"}),
        ("wss://bot.example.com/twilio", {}),
    ]
    for url, params in cases:
        ours = signature.compute(TOKEN, url, params)
        assert ours == sdk.compute_signature(url, params)
        assert sdk.validate(url, params, ours)
    # a repeated name: each value, sorted (what the SDK does for a multi-valued form)
    assert signature.signed_string(VOICE_URL, {"Digits": ["2", "1"]}) == VOICE_URL + "Digits1Digits2"


def test_default_port_either_way() -> None:
    sig = signature.compute(TOKEN, VOICE_URL, VOICE_PARAMS)
    assert signature.validate(TOKEN, "https://bot.example.com:443/twilio/voice", VOICE_PARAMS, sig)
    with_port = signature.compute(TOKEN, "wss://bot.example.com:443/twilio", None)
    assert signature.validate(TOKEN, "wss://bot.example.com/twilio", None, with_port)
    assert not signature.validate(TOKEN, "https://bot.example.com:8443/twilio/voice", VOICE_PARAMS, sig)


def test_refusals() -> None:
    sig = signature.compute(TOKEN, VOICE_URL, VOICE_PARAMS)
    assert not signature.validate(TOKEN, VOICE_URL, VOICE_PARAMS, None)  # unsigned
    assert not signature.validate(TOKEN, VOICE_URL, VOICE_PARAMS, "")
    assert not signature.validate(TOKEN, VOICE_URL, {**VOICE_PARAMS, "To": "+15550000000"}, sig)  # replayed
    assert not signature.validate(TOKEN, VOICE_URL, {**VOICE_PARAMS, "Extra": "1"}, sig)
    assert not signature.validate("another-token", VOICE_URL, VOICE_PARAMS, sig)  # forged
    assert not signature.validate("", VOICE_URL, VOICE_PARAMS, sig)  # no token configured: nothing passes
    assert not signature.validate(TOKEN, VOICE_URL, VOICE_PARAMS, sig + "x" * 200)
    # the upgrade signs the wss:// URL: the https:// one is another URL
    upgrade = signature.compute(TOKEN, "wss://bot.example.com/twilio/media", None)
    assert not signature.validate(TOKEN, "https://bot.example.com/twilio/media", None, upgrade)
    # a JSON body: the body's hash is in the signed URL
    json_sig = "9ta/cTxr+erxi4hAHxE7E9UzXTA="
    assert not signature.validate(TOKEN, JSON_URL, '{"event":"test","value":2}', json_sig)
