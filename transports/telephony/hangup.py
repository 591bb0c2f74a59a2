"""Ending a call through the carrier's REST API, for when the graph (or the server) ends it first.

Twilio: the official ``twilio`` SDK (the ``phone`` extra, imported only when a call is hung up) updates
the call with ``Status=completed``, over its asyncio HTTP client so the event loop never blocks. A
call that already ended (404, code 20404) counts as hung up.
"""

from __future__ import annotations

import logging

from pipeline.errors import VoxgraphError

log = logging.getLogger("transports.telephony")

__all__ = ["ALREADY_ENDED", "MissingSDKError", "twilio_hang_up"]

ALREADY_ENDED = 20404
"""Twilio's code for a call that is no longer there."""


class MissingSDKError(VoxgraphError, RuntimeError):
    """The carrier's SDK is not installed; the message says which extra brings it."""


async def twilio_hang_up(account_sid: str, call_sid: str, auth_token: str, api_url: str) -> bool:
    """Hang up Twilio call ``call_sid``; False if it had already ended.

    Args:
        api_url: Twilio's REST API base (``https://api.twilio.com``; another for a local stand-in).

    Raises ``MissingSDKError`` without the SDK, ``TwilioRestException`` when Twilio refuses.
    """
    try:
        from twilio.base.exceptions import TwilioRestException
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client
    except ImportError as error:
        raise MissingSDKError("hanging up needs the twilio SDK: pip install 'voxgraph[phone]'") from error
    http = AsyncTwilioHttpClient()
    # A non-empty environment: an empty one makes the SDK read TWILIO_REGION/EDGE, which rewrite the host.
    client = Client(account_sid, auth_token, http_client=http, environment={"VOXGRAPH": "1"})
    client.api.base_url = api_url.rstrip("/")
    try:
        await client.calls(call_sid).update_async(status="completed")
    except TwilioRestException as error:
        if error.status == 404 or error.code == ALREADY_ENDED:
            return False
        raise
    finally:
        await http.close()
    return True
