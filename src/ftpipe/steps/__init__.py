"""The five pipeline steps, one module each, each exposing ``run(config, ...) -> <Step>Result``.

A step reads its inputs from URIs, writes everything it produces under its ``output_uri`` (an S3
prefix in a pipeline run, any local directory in tests) and returns a small typed result that the
next step takes as input. Results travel between KFP tasks as JSON.
"""

from __future__ import annotations

from ftpipe.config import PipelineConfig
from ftpipe.results import StepResult as StepResult  # the base of every result, as before
from ftpipe.storage import join

# In pipeline order: the five of the design, the two data checks that let a run skip training, and the
# steps of a sweep.
STEP_NAMES = (
    "fingerprint_data",
    "clean_data",
    "compare_data",
    "select_model",
    "finetune",
    "evaluate",
    "register_model",
    # a sweep (config.sweep) in place of finetune: its rungs' plans, trials and winner
    "plan_trials",
    "train_trial",
    "choose_trial",
)

# The heavy modules a step's run() imports lazily (so that importing a step module for its Result type
# stays light). A pipeline task loads its step's ``LIBRARIES`` up front: see ftpipe.task.load_libraries.
TOKENIZER_LIBRARIES = ("transformers.models.auto.tokenization_auto",)
MODEL_LIBRARIES = ("torch", "transformers.modeling_utils", "transformers.models.auto.modeling_auto")
REPORT_LIBRARIES = ("matplotlib.pyplot",)


def step_output_uri(config: PipelineConfig, run_id: str, step: str) -> str:
    """Where ``step`` writes its artifacts in run ``run_id``."""
    return join(config.storage.artifact_root, run_id, step)
