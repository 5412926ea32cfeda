"""Head+tail truncation (``training.truncation``): a long text keeps its first and last tokens, in training and in
prediction alike, for the tasks that read a text as a whole."""

from __future__ import annotations

import numpy as np
import pytest

from ftpipe.tasks.base import TRUNCATION, encode
from ftpipe.tasks.text_classification import predict_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEAD = " ".join(["the", "plot", "of", "this", "film", "is", "long"] * 6)


def test_head_tail_keeps_both_ends_and_the_special_tokens(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    text = f"opening words {HEAD} closing verdict"
    whole = tokenizer(text)["input_ids"]
    cut = encode(tokenizer, [text], 16, "head_tail")
    ids = cut["input_ids"][0]
    assert len(ids) == 16 and ids == whole[:8] + whole[-8:]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[-3:-1]) == "closing verdict"
    assert {key: len(rows[0]) for key, rows in cut.items()} == {key: 16 for key in cut}
    head = encode(tokenizer, [text], 16, "head")["input_ids"][0]
    assert head == whole[:15] + [tokenizer.sep_token_id]
    short = encode(tokenizer, ["a short one"], 16, "head_tail")["input_ids"][0]
    assert short == tokenizer("a short one")["input_ids"]  # what fits is never cut


def test_prediction_cuts_as_the_saved_model_says(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    texts = [f"{HEAD} a wonderful ending", f"{HEAD} a dreadful ending"]  # the same head, different tails

    def outputs(truncation: str | None) -> np.ndarray:
        if truncation is not None:
            setattr(model.config, TRUNCATION, truncation)
        return predict_outputs(model, tokenizer, texts, batch_size=2, max_length=16, activation="softmax")

    assert np.array_equal(*outputs(None))  # a model saved before the setting: heads only, the tails unseen
    assert np.array_equal(*outputs("head"))
    tails = outputs("head_tail")
    assert not np.array_equal(tails[0], tails[1])  # a random head: small differences, but the tails count
