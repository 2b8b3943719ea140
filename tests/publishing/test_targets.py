"""The registry in tasks/publishing/targets is the single source of publish URI schemes and forms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks import publishing
from tasks.core.config import PROJECT_ROOT
from tasks.publishing.targets import TARGETS
from tasks.publishing.uris import parse_uri

# Per scheme: URIs a publish accepts, and pinned ones only a fetch accepts.
PUBLISHED = {"hf": ["hf://org/name"], "mlflow": ["mlflow://name"], "file": ["file:///tmp/adapters/tiny"]}
PINNED = {
    "hf": ["hf://org/name@0123456789abcdef0123456789abcdef01234567", "hf://org/name@main"],
    "mlflow": ["mlflow://name/3", "mlflow://name@champion"],
    "file": [],
}


def test_the_registry_holds_the_three_targets_in_the_order_of_the_help_texts():
    assert list(TARGETS) == ["hf", "mlflow", "file"]
    assert publishing.ACCEPTED_FORMS == (
        "hf://ORG/NAME (the Hugging Face Hub), mlflow://NAME (the MLflow Model Registry) "
        "or file:///ABSOLUTE/PATH (a folder)"
    )
    assert publishing.FETCH_FORMS == (
        "hf://ORG/NAME[@REVISION], mlflow://NAME[/VERSION | @ALIAS] or file:///ABSOLUTE/PATH"
    )


@pytest.mark.parametrize("scheme", sorted(TARGETS))
def test_every_target_round_trips_its_uris_through_parse(scheme):
    target = TARGETS[scheme]
    assert target.scheme == scheme
    example = target.forms.publish.split()[0]  # the form itself parses: "hf://ORG/NAME"
    for uri in [example, *PUBLISHED[scheme]]:
        parsed, address = parse_uri(uri)
        assert parsed is target and target.uri_of(address) == uri
        assert parse_uri(target.uri_of(address))[1] == address
        assert publishing.is_adapter_uri(uri)
    for uri in PINNED[scheme]:
        parsed, address = parse_uri(uri, for_fetch=True)
        assert parsed is target and target.uri_of(address) == uri
        assert address.version or address.alias
        with pytest.raises(publishing.PublishError, match="can only be fetched"):
            parse_uri(uri)


def test_what_each_target_needs_comes_from_the_registry():
    assert publishing.needs_hub_token(None, "mlflow://name", "hf://org/name")
    assert not publishing.needs_hub_token(None, "mlflow://name", "file:///tmp/x", "s3://bucket/x")
    for target in TARGETS.values():
        uri = target.forms.publish.split()[0]
        assert publishing.needs_hub_token(uri) == target.needs_hub_token
        assert publishing.publish_logs_adapter(uri) == target.logs_adapter_to_run
    assert [t.scheme for t in TARGETS.values() if t.logs_adapter_to_run] == ["mlflow"]
    assert not publishing.is_adapter_uri("s3://bucket/x") and not publishing.is_adapter_uri("org/name")


@pytest.mark.parametrize("for_fetch", [False, True])
def test_an_unknown_scheme_lists_exactly_the_registered_forms(for_fetch):
    forms = [t.forms.fetch if for_fetch else t.forms.publish for t in TARGETS.values()]
    with pytest.raises(publishing.PublishError) as rejected:
        parse_uri("s3://bucket/adapter", for_fetch=for_fetch)
    message = str(rejected.value)
    assert message.startswith("publish URI 's3://bucket/adapter': unknown scheme 's3'; accepted forms: ")
    listed = message.partition("accepted forms: ")[2]
    assert listed == ", ".join(forms[:-1]) + " or " + forms[-1]


def test_scheme_strings_live_only_in_their_target_module():
    """No `hf://`, `mlflow://` or `file://` outside targets/<module>.py, anywhere in tasks/ or flows/:
    help texts take the forms from the registry. The one exception is a value, not a branch: the
    demo's default `publish.uri`."""
    pattern = re.compile("|".join(re.escape(f"{scheme}://") for scheme in TARGETS))
    default_uri = '"mlflow://smollm2-chatterbot-lora",'
    targets_dir = PROJECT_ROOT / "tasks" / "publishing" / "targets"
    sources = [*(PROJECT_ROOT / "tasks").rglob("*.py"), *(PROJECT_ROOT / "flows").rglob("*.py")]
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{n}"
        for path in sources
        if Path(path).parent != targets_dir
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and line.strip() != default_uri
    ]
    assert offenders == []
