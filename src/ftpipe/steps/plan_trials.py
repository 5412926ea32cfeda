"""plan_trials: the trials one rung of a sweep trains (``config.sweep``), for the DAG's ParallelFor.

Rung 0 samples them (the configured Optuna sampler, its study rebuilt from the run's trial records); each later
rung promotes the best of the rung below by their validation metric. See :mod:`ftpipe.sweep`.
"""

from __future__ import annotations

import logging

from ftpipe import sweep
from ftpipe.config import PipelineConfig
from ftpipe.results import PlanTrialsResult
from ftpipe.storage import Storage

logger = logging.getLogger(__name__)


def run(config: PipelineConfig, rung: int, sweep_uri: str, storage: Storage | None = None) -> PlanTrialsResult:
    """The trials of ``rung``, planned from the records under ``sweep_uri``.

    Raises:
        ConfigError: the config has no sweep.
        SweepError: no trial of the rung below completed, or a record is unreadable.
    """
    storage = storage or Storage(config.storage)
    planned = sweep.plan_rung(config, sweep.read_records(storage, sweep_uri), rung)
    for trial in planned:
        logger.info("rung %d trial %d: %s, budget %g", rung, trial.trial, trial.params, trial.budget)
    return PlanTrialsResult(
        rung=rung, trials=[trial.model_dump(mode="json") for trial in planned], sweep_uri=sweep_uri
    )
