"""What goes wrong when publishing: a refused URI, credential or destination, or a failed verification."""

from __future__ import annotations


class PublishError(ValueError):
    """A URI, credential or destination that cannot work; the message names it and never holds a token.

    A ValueError, so the flows' retry condition does not retry it: it would fail the same way.
    Transient failures (network, Hub 5xx) keep their own types (OSError subclasses) and are retried.
    """


class VerificationError(PublishError):
    """The published adapter, fetched back, is not the adapter that was trained."""


class InvalidUri(ValueError):
    """Why a target refuses the part of a URI after `scheme://`.

    Raised by a target's `parse`; `uris.parse_uri` turns it into a PublishError naming the whole URI
    and every accepted form, so that no target needs to know the others.
    """
