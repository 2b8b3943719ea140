"""Publishing adapters: to the Hub, the MLflow Model Registry or a folder; fetching them back; verifying.

One URI says where an adapter goes; a registered model's `@champion` alias says which version to
serve (`champion.py`). `targets/` holds one module per URI scheme and the registry
that lists them. Other areas use only what is named here; flows prefer these names too.
"""

from tasks.publishing.card import model_card
from tasks.publishing.champion import (
    PROMOTE_MODES,
    ChampionInfo,
    NotComparable,
    Promote,
    PromotionDecision,
    Score,
    current_champion,
    promote_if_better,
)
from tasks.publishing.errors import PublishError, VerificationError
from tasks.publishing.export import ExportOptions, GgufExport, UnsupportedExport, export_gguf, export_to_run
from tasks.publishing.fetch import fetch_adapter, fetched_adapter
from tasks.publishing.pinning import pinned_uri
from tasks.publishing.publish import publish_adapter
from tasks.publishing.staging import save_adapter
from tasks.publishing.target import Published
from tasks.publishing.targets.mlflow_registry import registered_adapter_uris
from tasks.publishing.uris import (
    ACCEPTED_FORMS,
    ADAPTER_SCHEMES,
    FETCH_FORMS,
    has_aliases,
    is_adapter_uri,
    needs_hub_token,
    publish_logs_adapter,
)
from tasks.publishing.verify import Verification, verify_adapter

__all__ = [
    "ACCEPTED_FORMS",
    "ADAPTER_SCHEMES",
    "FETCH_FORMS",
    "PROMOTE_MODES",
    "ChampionInfo",
    "ExportOptions",
    "GgufExport",
    "NotComparable",
    "Promote",
    "PromotionDecision",
    "PublishError",
    "Published",
    "Score",
    "UnsupportedExport",
    "Verification",
    "VerificationError",
    "current_champion",
    "export_gguf",
    "export_to_run",
    "fetch_adapter",
    "fetched_adapter",
    "has_aliases",
    "is_adapter_uri",
    "model_card",
    "needs_hub_token",
    "pinned_uri",
    "promote_if_better",
    "publish_adapter",
    "publish_logs_adapter",
    "registered_adapter_uris",
    "save_adapter",
    "verify_adapter",
]
