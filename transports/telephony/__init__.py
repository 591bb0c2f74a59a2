"""Answer phone calls: carrier media streams (Twilio, Telnyx) spoken over a websocket.

``events`` holds what a carrier says, one dataclass per message; ``twilio_wire`` and ``telnyx_wire``
turn each carrier's JSON into those events and encode what goes back (audio, marks, clear). The wire
modules are Sans-I/O: the server feeds them text and sends what they return.
"""
