"""The errors a request can get, by class name: the client recognises them in Triton's error text.

PyTriton returns an exception raised by a model as a Triton error whose text ends with
`<module>.<Class>: <message>`; `runtime.serve.client` finds the class and the message there.
"""

from __future__ import annotations


class BadRequest(ValueError):
    """The request is malformed or breaks the engines' contract; the message is the runtime's."""


class UnknownSupport(LookupError):
    """The support id was never registered here (nor is it in the bank store): register it."""


ERROR_CLASSES = {cls.__name__: cls for cls in (BadRequest, UnknownSupport)}
