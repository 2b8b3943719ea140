"""Publishing adapters: to the Hub, the MLflow Model Registry or a folder; fetching them back; verifying.

Other areas use only what is named here.
"""

from tasks.publishing.publish import (
    Published,
    Verification,
    VerificationError,
    fetched_adapter,
    is_adapter_uri,
    needs_hub_token,
    registered_adapter_uris,
)

__all__ = [
    "Published",
    "Verification",
    "VerificationError",
    "fetched_adapter",
    "is_adapter_uri",
    "needs_hub_token",
    "registered_adapter_uris",
]
