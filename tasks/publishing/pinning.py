"""What a moving adapter URI points at right now, as a pinned URI.

A registry alias (`NAME@champion`) or a registered name alone (its champion, else its newest
version) moves when a new version is promoted; an app that caches loaded models by URI asks for
the pinned form on each use, so a promotion is served without a restart.
"""

from __future__ import annotations

from tasks.publishing.target import Address
from tasks.publishing.targets.mlflow_registry import CHAMPION, version_by_alias
from tasks.publishing.uris import is_adapter_uri, parse_uri


def pinned_uri(uri: str) -> str:
    """`uri` pinned to the version it names now; anything that is no moving registry URI is returned as is.

    Raises PublishError for an alias that points at a deleted version (never followed).
    """
    if not is_adapter_uri(uri):
        return uri
    target, address = parse_uri(uri, for_fetch=True)
    if not target.has_aliases or address.version:
        return uri
    version = version_by_alias(address.name, address.alias or CHAMPION)
    if version is None:
        return uri  # no alias (yet): fetching decides (the newest version, or a clear error)
    return target.uri_of(Address(address.name, str(version.version)))
