"""causal_lm_sft: supervised fine-tuning of a decoder (Llama, Qwen, GPT-2, SmolLM, ...) on prompt -> completion.

Data and test metrics: see ``ftpipe.tasks.generation`` (prompt in ``data.text_column``, completion in
``data.label_column``, both cleaned; exact match, ROUGE-L, chrF, BLEU and perplexity on test).

Conversations (``task.messages_column``): a column of ``{role, content}`` turns per row instead of the prompt and
completion columns. The last assistant turn is the completion and the turns before it the prompt, so the loss
covers that reply (a conversation with several replies to learn from is one row per reply). Every turn's content
is cleaned as a prompt is; a row that is not such a conversation (no assistant turn, no user turn before it, an
unknown role, bad JSON) is quarantined with its text missing, and the log names the first one.

Format: each pair becomes a chat, a user turn (after ``task.system_prompt`` when set) and the assistant's reply,
rendered by the model's chat template. A model without one, or ``task.chat_template: false``, gets a template made
of ``task.prompt_template`` (the text before the completion) and the end-of-sequence token after it; it is saved
with the tokenizer, so the registered model formats prompts the same way in ``transformers.pipeline``. The prompt
and the completion are tokenized apart and joined, so the prompt's tokens are exactly those generation starts from.

Loss: on the completion tokens only (``task.completion_only_loss``; off, on the whole text). A pair longer than
the fitted ``max_length`` keeps its reply (its start, at least half the length) and the prompt's head and tail
(the instruction, and the end of the turn the reply follows), dropping the prompt's middle; generation cuts long
prompts the same way.

Packing (``task.packing``): each batch is one row of its examples back to back with positions restarting per
example and no padding (``transformers.DataCollatorWithFlattening``); transformers' attention masks turn the
restarting positions into a block-diagonal mask, so no example attends to another. Whether a model does is checked
before training (two random sequences packed must give the logits they give alone); where it does not (an
architecture without that masking), batches are padded to their longest example instead, and the log says so.

Validation: loss and perplexity per evaluation (no generation while training); early stopping and sweeps watch
the loss. Probe (select_model): the zero-shot validation loss of each candidate on the completions, a
transferability signal that costs one forward pass per example.

Test: greedy or beam-search generation with ``task.generation`` (left-padded batches of similar length), and the
reference completion's perplexity under the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.errors import DataError
from ftpipe.tasks.base import TEXT, device, head_and_tail
from ftpipe.tasks.generation import COMPLETION, NO_LABEL, GenerativeTask
from ftpipe.text import clean_texts

logger = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")


def chat_turns(cell: Any) -> list[dict[str, str]]:
    """A conversation cell (a list of turns, or its JSON text) as ``[{"role": ..., "content": ...}, ...]``.

    Raises:
        ValueError: the cell is not such a list (the message says what is wrong).
    """
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg})") from None
    if isinstance(cell, np.ndarray):  # Parquet's lists
        cell = cell.tolist()
    if not isinstance(cell, list) or not cell:
        raise ValueError("not a list of turns")
    turns = []
    for turn in cell:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str) or turn.get("content") is None:
            raise ValueError('a turn without a "role" and a "content"')
        role = turn["role"].strip().lower()
        if role not in ROLES:
            raise ValueError(f"unknown role {turn['role']!r} (expected system, user or assistant)")
        turns.append({"role": role, "content": str(turn["content"])})
    return turns


def split_conversation(turns: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The turns before the last assistant turn (the prompt), and that turn's content (the completion)."""
    replies = [i for i, turn in enumerate(turns) if turn["role"] == "assistant"]
    if not replies:
        raise ValueError("no assistant turn")
    last = replies[-1]
    if not any(turn["role"] == "user" for turn in turns[:last]):
        raise ValueError("no user turn before the last assistant turn")
    return turns[:last], turns[last]["content"]


def serialised(turns: list[dict[str, str]]) -> str:
    """Turns as the prompt text of a cleaned split: JSON that clean_data's text cleaning leaves as it is.

    clean_data cleans the prompt text once more (markup, Unicode form, whitespace), so every character that
    cleaning could change (non-ASCII, <, >, &) is written as a JSON escape; the contents are cleaned already.
    """
    text = json.dumps(turns, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fallback_chat_template(prompt_template: str) -> str:
    """A Jinja chat template that renders user turns through ``prompt_template`` and ends replies with EOS.

    System turns come first, as plain paragraphs. With ``add_generation_prompt`` nothing is added: the prompt
    template already ends where the reply begins.
    """
    before, after = prompt_template.split("{prompt}", 1)
    return (
        "{% if bos_token %}{{ bos_token }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}{{ '\\n\\n' }}"
        f"{{% elif message['role'] == 'user' %}}{{{{ {json.dumps(before)} }}}}{{{{ message['content'] }}}}"
        f"{{{{ {json.dumps(after)} }}}}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    )


def packing_is_exact(model: Any) -> bool:
    """Whether ``model`` keeps packed examples apart: two random sequences packed into one row, with positions
    restarting at the second, give the logits each gives alone."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocabulary = int(model.config.vocab_size)
    first = torch.randint(0, vocabulary, (1, 5), generator=generator)
    second = torch.randint(0, vocabulary, (1, 7), generator=generator)
    run_on = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            alone = [model(input_ids=ids.to(run_on), use_cache=False).logits for ids in (first, second)]
            positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(run_on)
            packed = model(
                input_ids=torch.cat([first, second], dim=1).to(run_on), position_ids=positions, use_cache=False
            ).logits
    except Exception as error:  # noqa: BLE001 - a model that rejects position_ids cannot be packed
        logger.info("packing check failed (%s: %s)", type(error).__name__, error)
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed.float(), torch.cat(alone, dim=1).float(), atol=1e-4, rtol=1e-3))


class CausalLMSFT(GenerativeTask):
    type = "causal_lm_sft"
    pipeline_tag = "text-generation"
    huggingface_server_task = "text_generation"
    model_class = "AutoModelForCausalLM"
    probe_model_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"

    # -- data (clean_data) ---------------------------------------------------------------------

    def input_columns(self) -> dict[str, str]:
        column = self.settings.messages_column
        return super().input_columns() if column is None else {column: "task.messages_column"}

    def read_rows(self, frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
        column = self.settings.messages_column
        if column is None:
            return super().read_rows(frame)
        contexts: list[list[dict[str, str]] | None] = []
        replies: list[str | None] = []
        problems = []
        for number, cell in enumerate(frame[column].tolist(), start=1):
            context = reply = None
            if not (cell is None or (isinstance(cell, float) and math.isnan(cell))):
                try:
                    context, reply = split_conversation(chat_turns(cell))
                except ValueError as error:
                    problems.append(f"conversation {number}: {error}")
            contexts.append(context)
            replies.append(reply)
        if problems and all(context is None for context in contexts):
            raise DataError(f"column {column!r} holds no usable conversation ({problems[0]})")
        if problems:
            logger.warning(
                "%d row(s) of column %r are not conversations (quarantined as missing text), first: %s",
                len(problems), column, problems[0],
            )
        # Every turn's content cleaned at once, as clean_data cleans a prompt column.
        contents = pd.Series([turn["content"] for turns in contexts if turns for turn in turns], dtype=object)
        cleaned = iter(clean_texts(contents, self.config.cleaning).tolist())
        texts = [
            None if turns is None else serialised([{**turn, "content": next(cleaned)} for turn in turns])
            for turns in contexts
        ]
        return pd.Series(texts, dtype=object), np.asarray(replies, dtype=object)

    def prompt_shown(self, text: str) -> str:
        if self.settings.messages_column is None:
            return text
        return " / ".join(f"{turn['role']}: {turn['content']}" for turn in json.loads(text))

    # -- formatting ----------------------------------------------------------------------------

    def prepare_tokenizer(self, tokenizer: Any) -> None:
        if not (self.settings.chat_template and tokenizer.chat_template):
            tokenizer.chat_template = fallback_chat_template(self.settings.prompt_template)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat before the reply: the conversation's turns, or one user turn; the system prompt first."""
        if self.settings.messages_column is None:
            turns = [{"role": "user", "content": prompt}]
        else:
            turns = json.loads(prompt)
        system = self.settings.system_prompt
        if system and turns[0]["role"] != "system":
            turns = [{"role": "system", "content": system}, *turns]
        return turns

    def prompt_texts(self, tokenizer: Any, prompts: Sequence[str]) -> list[str]:
        """Each prompt as the model sees it before its reply (chat-formatted, the assistant's turn opened)."""
        return [
            tokenizer.apply_chat_template(self._messages(prompt), add_generation_prompt=True, tokenize=False)
            for prompt in prompts
        ]

    def _reply_texts(self, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        """What follows each prompt text in the formatted pair: the reply and the template's end-of-turn marks."""
        replies = []
        for prompt, completion, before in zip(prompts, completions, self.prompt_texts(tokenizer, prompts), strict=True):
            chat = [*self._messages(prompt), {"role": "assistant", "content": completion}]
            whole = tokenizer.apply_chat_template(chat, tokenize=False)
            # Templates render the conversation so far identically with or without the reply; one that does not
            # (it rewrites earlier turns) still trains, on its own text after the shared start.
            shared = len(os.path.commonprefix([whole, before]))
            replies.append(whole[shared:])
        return replies

    def _encode(self, tokenizer: Any, frame: pd.DataFrame, max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and loss labels of each row (prompt tokens masked unless the loss covers the whole text)."""
        prompts, completions = frame[TEXT].tolist(), frame[COMPLETION].tolist()
        # The templates write special tokens out as text: tokenizing must not add them a second time.
        before = tokenizer(self.prompt_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]
        after = tokenizer(self._reply_texts(tokenizer, prompts, completions), add_special_tokens=False)["input_ids"]
        ids, labels = [], []
        for prompt_ids, reply_ids in zip(before, after, strict=True):
            prompt_ids, reply_ids = fit_in(prompt_ids, reply_ids, max_length)
            masked = [NO_LABEL] * len(prompt_ids) if self.settings.completion_only_loss else list(prompt_ids)
            ids.append(prompt_ids + reply_ids)
            labels.append(masked + reply_ids)
        return ids, labels

    def token_lengths(self, tokenizer: Any, frame: pd.DataFrame) -> list[int]:
        self.prepare_tokenizer(tokenizer)
        ids, _ = self._encode(tokenizer, frame, max_length=10**9)
        return [len(row) for row in ids]

    # -- the model (finetune) ------------------------------------------------------------------

    def load_model(self, source: str, *, trust_remote_code: bool = False, **settings: Any):
        model = super().load_model(source, trust_remote_code=trust_remote_code, **settings)
        # Training needs no key/value cache, and transformers tells packed examples apart only without one.
        model.config.use_cache = False
        return model

    def finalize(self, trainer: Any, validation_dataset: Any) -> list[str]:
        trainer.model.config.use_cache = True  # the saved model generates with its cache
        return []

    def dataset(self, frame: pd.DataFrame, tokenizer: Any, max_length: int, model_config: Any):
        import datasets

        ids, labels = self._encode(tokenizer, frame, max_length)
        return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})

    def collator(self, tokenizer: Any, pad_to_multiple_of: int | None, model: Any = None):
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        if self.settings.packing and model is not None:
            if packing_is_exact(model):
                logger.info("packing: each batch is one padding-free sequence, positions restarting per example")
                return DataCollatorWithFlattening(return_position_ids=True, separator_id=NO_LABEL)
            logger.warning(
                "packing: %s does not keep packed examples apart (its attention ignores restarting positions); "
                "padding each batch instead",
                model.config.model_type,
            )
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=NO_LABEL, pad_to_multiple_of=pad_to_multiple_of)

    def _scored_ids(self, model: Any, tokenizer: Any, frame: pd.DataFrame, max_length: int):
        return self._encode(tokenizer, frame, max_length)

    def _token_losses(self, model: Any, input_ids: Any, attention_mask: Any, labels: Any):
        import torch

        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        shifted = labels[:, 1:]  # the logits at each position predict the next token
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), shifted, ignore_index=NO_LABEL, reduction="none"
        )
        return losses, shifted

    # -- prediction (evaluate) -------------------------------------------------------------------

    def predict(self, model_dir: str, frame: pd.DataFrame) -> pd.DataFrame:
        import torch
        import transformers

        from ftpipe.models import load_pretrained, load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        model = load_pretrained(getattr(transformers, self.model_class), model_dir)
        self.prepare_tokenizer(tokenizer)  # a saved model has its template already; a production one may not
        run_on = device()
        model.to(run_on).eval()
        window = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 2048
        nll, tokens = self._completion_nll(model, tokenizer, frame, window)
        settings = self.settings.generation
        prompts = self.prompt_texts(tokenizer, frame[TEXT].tolist())
        budget = max(8, window - settings.max_new_tokens)  # a prompt too long loses its middle, as in training
        prompt_ids = [head_and_tail(ids, budget) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        generated = [""] * len(prompts)
        tokenizer.padding_side = "left"  # generation continues every row from its last real token
        order = np.argsort([len(ids) for ids in prompt_ids], kind="stable")  # similar lengths: little padding
        with torch.inference_mode():
            for start in range(0, len(order), settings.batch_size):
                rows = order[start : start + settings.batch_size]
                batch = tokenizer.pad(
                    {"input_ids": [prompt_ids[i] for i in rows]}, padding=True, return_tensors="pt"
                ).to(run_on)
                output = model.generate(
                    **batch,
                    max_new_tokens=settings.max_new_tokens,
                    num_beams=settings.num_beams,
                    length_penalty=settings.length_penalty,
                    repetition_penalty=settings.repetition_penalty,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                replies = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
                for i, reply in zip(rows, replies, strict=True):
                    generated[i] = reply.strip()
        return pd.DataFrame({"predicted": generated, "nll": nll, "completion_tokens": tokens})

    # -- model card ----------------------------------------------------------------------------

    def _card_what(self) -> str:
        return "A decoder fine-tuned to answer prompts (supervised fine-tuning on prompt -> completion pairs)."

    def usage_snippet(self) -> str:
        return "\n".join(
            [
                "from transformers import pipeline",
                "",
                'generator = pipeline("text-generation", model=DIRECTORY)',
                'chat = [{"role": "user", "content": "Is this SMS spam? WINNER! Claim your prize now"}]',
                f"reply = generator(chat, max_new_tokens={self.settings.generation.max_new_tokens}, do_sample=False)",
                'print(reply[0]["generated_text"][-1]["content"])',
            ]
        )


def fit_in(prompt_ids: list[int], reply_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """A prompt and its reply within ``max_length`` tokens: the reply keeps its start and at least half the length
    (what the loss learns from), the prompt its head and tail (``head_and_tail``: the instruction and the turn's
    end, from which the reply follows)."""
    if len(prompt_ids) + len(reply_ids) <= max_length:
        return prompt_ids, reply_ids
    reply_ids = reply_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    return head_and_tail(prompt_ids, max_length - len(reply_ids)), reply_ids
