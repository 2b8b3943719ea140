"""Publish URIs: which target a URI names and where within it, checked against the registry.

`scheme://rest`: the scheme picks the target in `targets.TARGETS`, the target parses the rest.
The accepted forms listed in help and error texts are built from the same registry.
"""

from __future__ import annotations

from tasks.publishing.errors import InvalidUri, PublishError
from tasks.publishing.target import Address, Target
from tasks.publishing.targets import TARGETS


def _either(forms: list[str]) -> str:
    return f"{', '.join(forms[:-1])} or {forms[-1]}" if len(forms) > 1 else forms[0]


ACCEPTED_FORMS = _either([target.forms.publish for target in TARGETS.values()])
FETCH_FORMS = _either([target.forms.fetch for target in TARGETS.values()])
# How help texts list the schemes: each registered scheme with its "://", in registry order.
ADAPTER_SCHEMES = ", ".join(f"{scheme}://" for scheme in TARGETS)


def _reject(uri: str, why: str, forms: str) -> PublishError:
    return PublishError(f"publish URI {uri!r}: {why}; accepted forms: {forms}")


def parse_uri(uri: str, for_fetch: bool = False) -> tuple[Target, Address]:
    """The target a URI names and the address within it; pinned forms (@revision, /version) only when fetching."""
    forms = FETCH_FORMS if for_fetch else ACCEPTED_FORMS
    if not isinstance(uri, str) or "://" not in uri:
        raise _reject(uri, "not a URI (no scheme://)", forms)
    scheme, _, rest = uri.partition("://")
    target = TARGETS.get(scheme)
    if target is None:
        raise _reject(uri, f"unknown scheme {scheme!r}", forms)
    try:
        return target, target.parse(rest, for_fetch)
    except InvalidUri as why:
        raise _reject(uri, str(why), forms) from None


def _target_named_by(uri: str | None) -> Target | None:
    """The target of a URI's scheme, without checking the rest; None for anything else."""
    if not isinstance(uri, str) or "://" not in uri:
        return None
    return TARGETS.get(uri.partition("://")[0])


def is_adapter_uri(value: str) -> bool:
    """Whether `value` names an adapter by a publish URI (whatever its form), rather than a model."""
    return _target_named_by(value) is not None


def needs_hub_token(*uris: str | None) -> bool:
    """Whether publishing to, or fetching from, any of `uris` talks to the Hub (and so needs its token)."""
    return any(target.needs_hub_token for target in map(_target_named_by, uris) if target)


def publish_logs_adapter(uri: str) -> bool:
    """Whether publishing to `uri` logs the adapter folder into the MLflow run itself (so a flow need not)."""
    target = _target_named_by(uri)
    return target is not None and target.logs_adapter_to_run


def has_aliases(uri: str) -> bool:
    """Whether what `uri` names can hold the @champion alias (a registry version), so a flow may promote it."""
    target = _target_named_by(uri)
    return target is not None and target.has_aliases
