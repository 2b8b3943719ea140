"""The registry of publish targets: the one place that lists them.

A new target is one module beside these, building a `Target`, plus its entry below. The order is
the order in which help and error texts list the accepted URI forms.
"""

from tasks.publishing.target import Target
from tasks.publishing.targets.folder import FOLDER
from tasks.publishing.targets.hub import HUB
from tasks.publishing.targets.mlflow_registry import MLFLOW_REGISTRY

TARGETS: dict[str, Target] = {target.scheme: target for target in (HUB, MLFLOW_REGISTRY, FOLDER)}

__all__ = ["TARGETS"]
