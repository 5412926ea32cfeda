"""One module per kind of fine-tuning, each a :class:`~ftpipe.tasks.base.Task`, looked up by ``config.task.type``.

The steps ask :func:`get_task` for the task of a run and call it for everything that differs between
tasks; they never branch on the task type themselves. See ``ftpipe.tasks.base`` for the protocol.
"""

from __future__ import annotations

import importlib

from ftpipe.config import PipelineConfig
from ftpipe.tasks.base import Task

# config.task.type -> "module:class"; modules import on first use, so a step pays only for its own task.
TASKS = {
    "text_classification": "ftpipe.tasks.text_classification:TextClassification",
    "multi_label_classification": "ftpipe.tasks.multi_label_classification:MultiLabelClassification",
    "regression": "ftpipe.tasks.regression:Regression",
    "token_classification": "ftpipe.tasks.token_classification:TokenClassification",
    "causal_lm_sft": "ftpipe.tasks.causal_lm_sft:CausalLMSFT",
    "seq2seq": "ftpipe.tasks.seq2seq:Seq2Seq",
}


def task_class(task_type: str) -> type[Task]:
    module, name = TASKS[task_type].split(":")
    return getattr(importlib.import_module(module), name)


def get_task(config: PipelineConfig) -> Task:
    """The task of a run, set up with its config."""
    return task_class(config.task.type)(config)
