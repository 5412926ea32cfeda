"""compare_data: is there anything new to learn from since the production model was trained?

Compares the cleaned data's fingerprint with the one recorded in the metadata of the registry's
``production`` version. Equal fingerprints mean a scheduled retrain would spend a GPU on the data the
production model already saw, so the DAG skips fine-tuning and registration (``changed`` is False)
unless the run forces it.
"""

from __future__ import annotations

import logging

from ftpipe.config import PipelineConfig
from ftpipe.registry import ModelRegistry
from ftpipe.results import CompareDataResult
from ftpipe.storage import Storage

logger = logging.getLogger(__name__)
PRODUCTION_ALIAS = "production"


def run(
    config: PipelineConfig,
    fingerprint: str,
    force: bool = False,
    storage: Storage | None = None,
    registry: ModelRegistry | None = None,
) -> CompareDataResult:
    registry = registry or ModelRegistry(storage or Storage(config.storage), config.registry.uri)
    name = config.registry.model_name
    production = registry.resolve_alias(name, PRODUCTION_ALIAS)
    recorded = None if production is None else production.metadata.get("data", {}).get("fingerprint")
    if production is None:
        changed, message = True, f"no production version of '{name}': training"
    elif recorded != fingerprint:
        changed, message = True, f"data changed since production version {production.version}: training"
    elif force:
        changed, message = True, f"data unchanged since production version {production.version}, forced: training"
    else:
        changed = False
        message = (
            f"data unchanged since production version {production.version} (fingerprint {fingerprint[:12]}): "
            "skipping fine-tuning and registration"
        )
    logger.info(message)
    return CompareDataResult(
        changed=changed,
        fingerprint=fingerprint,
        production_version=None if production is None else production.version,
        production_fingerprint=recorded,
        message=message,
    )
