"""seq2seq: fine-tuning an encoder-decoder (T5, BART, Marian, ...) on source -> target text.

Data and test metrics: see ``ftpipe.tasks.generation`` (source in ``data.text_column``, target in
``data.label_column``, both cleaned; exact match, ROUGE-L, chrF, BLEU and perplexity on test).

Model: a candidate whose config is an encoder-decoder loads as ``AutoModelForSeq2SeqLM``. A candidate that is a
pre-trained *encoder* of the BERT family (BERT, RoBERTa, ELECTRA, ...) is warm-started into one as in Rothe et al.,
"Leveraging Pre-trained Checkpoints for Sequence Generation Tasks" (2020): its weights on both sides
(``EncoderDecoderModel.from_encoder_decoder_pretrained(source, source)``), the decoder's self-attention made
causal and cross-attention layers added, newly initialised. The decoder starts from the tokenizer's ``[CLS]``
(else BOS) and ends at ``[SEP]`` (else EOS). Since an encoder-only checkpoint is all that exists offline here,
this is what makes all-MiniLM-L6-v2 a real pre-trained candidate. A decoder-only model is refused (fine-tune it
with ``causal_lm_sft``).

Inputs: ``task.source_prefix`` (T5's ``summarize: ``) and the source, truncated to the fitted ``max_length``; the
labels are the target's tokens, without the decoder start token where the tokenizer puts it first (the decoder
is given it, it does not predict it), truncated to ``max_length`` with their end-of-sequence token kept.

Validation: loss and perplexity per evaluation (no generation while training); early stopping and sweeps watch
the loss. Probe (select_model): the zero-shot validation loss of each candidate on the targets, built as for
training (a warm-started encoder's cross-attention is still random there, so the probe measures what its
encoder and its language-model head bring).

Test: greedy or beam-search generation with ``task.generation``, and the reference's perplexity under the model.
The same decoding settings are saved in the model's ``generation_config``, so a plain ``generate()`` on the
registered model decodes as evaluate did. (transformers 5 removed the ``text2text-generation`` pipeline: the model
card shows ``generate()``.)
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from ftpipe.errors import ModelError
from ftpipe.tasks.base import TEXT, device, first_line, sorted_by_length
from ftpipe.tasks.generation import COMPLETION, NO_LABEL, GenerativeTask

logger = logging.getLogger(__name__)


def warm_start_kind(model_config: Any) -> str | None:
    """Why a non-encoder-decoder config cannot be warm-started into a seq2seq model; None when it can.

    A warm-started encoder must be bidirectional (a masked-LM family) and its architecture must have a decoder
    form with cross-attention (a causal-LM class of the same family, e.g. ``BertLMHeadModel``).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = model_config.model_type
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return f"{model_type} is a decoder-only model (fine-tune it with task type causal_lm_sft)"
        return f"{model_type} is neither an encoder-decoder nor a BERT-family encoder"
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{model_type} is an encoder without a decoder form (no cross-attention) to warm-start from"
    return None


class Seq2Seq(GenerativeTask):
    type = "seq2seq"
    pipeline_tag = "text2text-generation"
    huggingface_server_task = "text2text_generation"
    model_class = "AutoModelForSeq2SeqLM"
    probe_model_class = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"

    # -- inputs --------------------------------------------------------------------------------

    def prepare_tokenizer(self, tokenizer: Any) -> None:
        if _wordpiece(tokenizer) and not tokenizer.clean_up_tokenization_spaces:
            # A WordPiece decoder joins tokens with spaces and tidies each token alone, so generations read
            # "i ' m here": the whole-text clean-up rejoins contractions (and is saved with the tokenizer, so the
            # registered model decodes the same).
            tokenizer.clean_up_tokenization_spaces = True
            tokenizer.init_kwargs["clean_up_tokenization_spaces"] = True  # what save_pretrained writes

    def sources(self, frame: pd.DataFrame) -> list[str]:
        """Each row's text as the encoder reads it (after ``source_prefix``)."""
        prefix = self.settings.source_prefix or ""
        return [prefix + text for text in frame[TEXT].tolist()]

    def _encode(
        self, tokenizer: Any, frame: pd.DataFrame, max_length: int, start_token_id: int | None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Source token ids (truncated) and label ids (the decoder start token dropped, truncated) of each row."""
        ids = tokenizer(self.sources(frame), truncation=True, max_length=max_length)["input_ids"]
        targets = tokenizer(text_target=frame[COMPLETION].tolist())["input_ids"]
        special = set(tokenizer.all_special_ids)
        labels = []
        for row in targets:
            if start_token_id is not None and row[:1] == [start_token_id]:
                row = row[1:]  # BERT's [CLS] is the decoder's start: given to it, never predicted
            if len(row) > max_length:
                # Truncated like the source: the end-of-sequence token stays last.
                row = row[: max_length - 1] + row[-1:] if row[-1] in special else row[:max_length]
            labels.append(row)
        return ids, labels

    def token_lengths(self, tokenizer: Any, frame: pd.DataFrame) -> list[int]:
        ids, labels = self._encode(tokenizer, frame, max_length=10**9, start_token_id=None)
        return [max(len(source), len(target)) for source, target in zip(ids, labels, strict=True)]

    # -- the model (finetune) ------------------------------------------------------------------

    def load_model(self, source: str, *, trust_remote_code: bool = False, **settings: Any):
        from transformers import AutoConfig

        try:
            model_config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        except Exception as error:  # noqa: BLE001 - transformers raises many types for "cannot load"
            raise ModelError(f"cannot load model {source}: {first_line(error)}") from None
        if getattr(model_config, "is_encoder_decoder", False):
            model = super().load_model(source, trust_remote_code=trust_remote_code, **settings)
        else:
            model = self._warm_start(source, model_config, trust_remote_code, settings)
        self._decode_as_configured(model)
        return model

    def _warm_start(self, source: str, model_config: Any, trust_remote_code: bool, settings: dict[str, Any]):
        """An encoder-decoder made of the encoder ``source`` twice (Rothe et al. 2020), its special tokens set.

        Raises:
            ModelError: ``source`` is no encoder that has a decoder form, or its tokenizer has no start or end token.
        """
        from transformers import EncoderDecoderModel

        from ftpipe.models import load_tokenizer

        reason = warm_start_kind(model_config)
        if reason is not None:
            raise ModelError(f"cannot build a seq2seq model from {source}: {reason}")
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if start is None or end is None:
            raise ModelError(
                f"cannot build a seq2seq model from {source}: its tokenizer has no CLS/BOS or SEP/EOS token"
            )
        # Loading settings (attention, dropout overrides, quantisation) apply to both halves alike.
        both = {"use_safetensors": True, "trust_remote_code": trust_remote_code, **settings}
        halves = {f"{side}_{name}": value for name, value in both.items() for side in ("encoder", "decoder")}
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(source, source, **halves)
        except Exception as error:  # noqa: BLE001 - transformers raises many types for "cannot load"
            raise ModelError(f"cannot build a seq2seq model from {source}: {first_line(error)}") from None
        model.config.decoder_start_token_id = start
        model.config.bos_token_id = start
        model.config.eos_token_id = end
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        model.config.vocab_size = model.config.decoder.vocab_size  # the loss and generate() read it off the top
        return model

    def _decode_as_configured(self, model: Any) -> None:
        """Put ``task.generation`` and the special tokens into the model's generation config (saved with it)."""
        settings, generation = self.settings.generation, model.generation_config
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            if getattr(generation, name, None) is None:
                setattr(generation, name, getattr(model.config, name, None))
        generation.max_new_tokens = settings.max_new_tokens
        generation.num_beams = settings.num_beams
        generation.do_sample = False
        generation.repetition_penalty = settings.repetition_penalty
        # Beam-search-only settings on a greedy config fail its validation when saved.
        generation.length_penalty = settings.length_penalty if settings.num_beams > 1 else 1.0

    def load_probe_model(self, source: str, *, trust_remote_code: bool = False):
        from transformers import set_seed

        set_seed(self.config.training.seed)  # a warm-started model's new cross-attention, the same every run
        return self.load_model(source, trust_remote_code=trust_remote_code)

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        import datasets

        start = getattr(model_config, "decoder_start_token_id", None)
        ids, labels = self._encode(tokenizer, frame, max_length, start)
        return datasets.Dataset.from_dict(
            {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], "labels": labels}
        )

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None, model: Any = None):
        from transformers import DataCollatorForSeq2Seq

        # With the model, the collator also writes decoder_input_ids (the labels shifted right), which a loss
        # computed outside the model (label smoothing) needs.
        return DataCollatorForSeq2Seq(
            tokenizer, model=model, label_pad_token_id=NO_LABEL, pad_to_multiple_of=pad_to_multiple_of
        )

    def trainer_classes(self) -> tuple[str, str]:
        return "Seq2SeqTrainingArguments", "Seq2SeqTrainer"

    def _scored_ids(self, model: Any, tokenizer: Any, frame: pd.DataFrame, max_length: int):
        return self._encode(tokenizer, frame, max_length, model.config.decoder_start_token_id)

    def _token_losses(self, model: Any, input_ids: Any, attention_mask: Any, labels: Any):
        import torch

        # With labels, the model feeds its decoder the labels shifted right behind the start token: the logits at
        # each position predict the label there.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=NO_LABEL, reduction="none"
        )
        return losses, labels

    # -- prediction (evaluate) -------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        import torch
        import transformers

        from ftpipe.models import load_pretrained, load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        self.prepare_tokenizer(tokenizer)  # a saved model decodes as trained; a production one may not
        model = load_pretrained(getattr(transformers, self.model_class), model_dir)
        run_on = device()
        model.to(run_on).eval()
        window = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 512
        nll, tokens = self._completion_nll(model, tokenizer, frame, window)
        settings = self.settings.generation
        sources = self.sources(frame)
        generated = [""] * len(sources)
        order = sorted_by_length(sources)
        with torch.inference_mode():
            for start in range(0, len(order), settings.batch_size):
                rows = order[start : start + settings.batch_size]
                batch = tokenizer(
                    [sources[i] for i in rows], padding=True, truncation=True, max_length=window, return_tensors="pt"
                )
                # The encoder reads one segment: segment ids (BERT's token_type_ids) are left out, as a T5 or
                # BART encoder would reject them.
                output = model.generate(
                    input_ids=batch["input_ids"].to(run_on),
                    attention_mask=batch["attention_mask"].to(run_on),
                    max_new_tokens=settings.max_new_tokens,
                    num_beams=settings.num_beams,
                    length_penalty=settings.length_penalty,
                    repetition_penalty=settings.repetition_penalty,
                    do_sample=False,
                )
                for i, text in zip(rows, tokenizer.batch_decode(output, skip_special_tokens=True), strict=True):
                    generated[i] = text.strip()
        return pd.DataFrame({"predicted": generated, "nll": nll, "completion_tokens": tokens})

    # -- model card ----------------------------------------------------------------------------

    def _card_what(self) -> str:
        return "An encoder-decoder fine-tuned to write a target text for each source text (sequence to sequence)."

    def usage_snippet(self) -> str:
        source = (self.settings.source_prefix or "") + "Where have you been all day?"
        return "\n".join(
            [
                "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                "",
                "tokenizer = AutoTokenizer.from_pretrained(DIRECTORY)",
                "model = AutoModelForSeq2SeqLM.from_pretrained(DIRECTORY)",
                f'inputs = tokenizer([{source!r}], return_tensors="pt", return_token_type_ids=False)',
                "outputs = model.generate(**inputs)  # decoding settings: the saved generation_config",
                "print(tokenizer.batch_decode(outputs, skip_special_tokens=True)[0])",
            ]
        )


def _wordpiece(tokenizer: Any) -> bool:
    """Whether a tokenizer decodes with a WordPiece decoder (BERT's ``##`` continuations)."""
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.WordPiece)
