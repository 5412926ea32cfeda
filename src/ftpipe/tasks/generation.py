"""What the generative tasks (causal_lm_sft, seq2seq) share: free-text targets, and scoring generations.

Data: ``data.text_column`` holds the prompt (or source text), ``data.label_column`` the completion (or target
text). Both go through clean_data's text cleaning; a row without a completion is quarantined as
``missing_completion``, one whose completion is empty after cleaning as ``empty_completion``. The same prompt may
come with several completions (``one_target_per_text`` is False): only exact copies of a whole example are
duplicates. The split is at random, or stratified on the completion with ``task.scoring: exact_match`` (answers
from a closed set). Cleaned splits hold ``text`` and ``completion``.

The model's one output is :data:`OUTPUT` (the completion), which plays the part of the label set in the steps.

Test metrics, all computed, the primary one chosen by ``task.scoring``: ``exact_match`` (the share of generations
equal to the reference after trimming, case folding and collapsing whitespace), ``rouge_l`` (mean ROUGE-L F1,
rouge-score), ``chrf`` and ``bleu`` (corpus chrF and BLEU, sacrebleu, on a 0-1 scale) and ``perplexity`` of the
reference completions under the model. The evaluation report shows ``task.report_samples`` generations next to
their references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ftpipe.errors import DataError
from ftpipe.tasks.base import (
    CONSTANT,
    TEXT,
    Baseline,
    ProbeScore,
    Table,
    Targets,
    Task,
    cells_as_text,
    keys_of,
    reason_codes,
    require_columns,
)
from ftpipe.text import clean_texts

COMPLETION = "completion"
OUTPUT = COMPLETION  # the model's one output, in the place of a label set
SPLIT_COLUMNS = (TEXT, COMPLETION)
NO_LABEL = -100  # positions the loss ignores (the Trainer's and the collators' convention)


def normalise_answer(text: str) -> str:
    """An answer as exact match compares it: trimmed, case-folded, whitespace runs as one space."""
    return " ".join(str(text).split()).casefold()


def generation_scores(references: Sequence[str], generated: Sequence[str]) -> dict[str, float]:
    """exact_match, rouge_l, chrf and bleu of generations against their references (0-1, higher is better)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    references, generated = [str(text) for text in references], [str(text) for text in generated]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(references, generated, strict=True))
    rouge = [scorer.score(reference, output)["rougeL"].fmeasure for reference, output in pairs]
    exact = [normalise_answer(reference) == normalise_answer(output) for reference, output in pairs]
    return {
        "exact_match": float(np.mean(exact)) if exact else float("nan"),
        "rouge_l": float(np.mean(rouge)) if rouge else float("nan"),
        "chrf": sacrebleu.corpus_chrf(generated, [references]).score / 100,
        "bleu": sacrebleu.corpus_bleu(generated, [references]).score / 100,
    }


def resampled_generation_scores(
    references: Sequence[str], generated: Sequence[str], nll: np.ndarray, tokens: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`generation_scores` and :func:`perplexity` on every bootstrap resample (``weights[b, i]``: draws of row
    i). chrF and BLEU are corpus scores: each resample's score comes from its summed sentence statistics, exactly
    as sacrebleu sums them for a corpus."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    from ftpipe.tasks import bootstrap

    references, generated = [str(text) for text in references], [str(text) for text in generated]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(references, generated, strict=True))
    rouge = np.array([scorer.score(reference, output)["rougeL"].fmeasure for reference, output in pairs])
    exact = np.array([normalise_answer(reference) == normalise_answer(output) for reference, output in pairs])
    total = weights.sum(axis=1).astype(np.float64)
    scores = {
        "exact_match": bootstrap.weighted_sum(weights, exact) / total,
        "rouge_l": bootstrap.weighted_sum(weights, rouge) / total,
    }
    for name, metric in (("chrf", CHRF()), ("bleu", BLEU())):
        sums = bootstrap.weighted_sum(weights, np.array(metric._extract_corpus_statistics(generated, [references])))
        scores[name] = np.array([metric._compute_score_from_stats(list(row)).score / 100 for row in sums])
    token_sums = bootstrap.weighted_sum(weights, tokens)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores["perplexity"] = np.where(
            token_sums > 0, np.exp(bootstrap.weighted_sum(weights, nll) / token_sums), np.nan
        )
    return scores


def perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp of the mean negative log-likelihood per completion token, over rows with at least one token."""
    total = float(np.asarray(tokens).sum())
    return math.exp(float(np.asarray(nll).sum()) / total) if total > 0 else float("nan")


class GenerativeTask(Task):
    """The data and scoring half of a generative task; subclasses add the model, its inputs and generation."""

    target_reasons = ("missing_completion", "empty_completion")
    one_target_per_text = False
    # The generated text depends on every layer: adapting the attention and MLP projections alike beats peft's
    # attention-only family defaults (Dettmers et al. 2023, QLoRA), and covers the new cross-attention of a
    # warm-started encoder-decoder, for which peft has no default at all.
    lora_targets = "all-linear"

    # -- data ----------------------------------------------------------------------------------

    def encode_targets(self, raw: np.ndarray, train: np.ndarray) -> Targets:
        present = cells_as_text(raw)
        missing = pd.isna(pd.Series(present, dtype=object)).to_numpy()
        cleaned = clean_texts(pd.Series(present, dtype=object), self.config.cleaning).to_numpy(dtype=object)
        empty = ~missing & (pd.Series(cleaned).str.len().to_numpy() == 0)
        reason = np.where(missing, "missing_completion", np.where(empty, "empty_completion", None))
        usable = ~missing & ~empty
        key, vocabulary = keys_of(cleaned, usable)
        if not (usable & train).any():
            raise DataError("no usable training rows left after cleaning (every row lacks a prompt or a completion)")
        strata = key if self.settings.scoring == "exact_match" else None
        return Targets(reason_codes(self.target_reasons, reason), key, vocabulary, [OUTPUT], strata, vocabulary)

    def split_columns(self, targets: Targets, rows: np.ndarray) -> dict[str, Any]:
        return {COMPLETION: np.asarray(targets.vocabulary, dtype=object)[targets.key[rows]]}

    def strata(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.settings.scoring != "exact_match":
            return None
        return pd.factorize(frame[COMPLETION])[0].astype(np.int64)

    def describe_targets(self, frames: dict[str, pd.DataFrame]) -> Table:
        rows = []
        for name, frame in frames.items():
            lengths = frame[COMPLETION].str.len()
            rows.append([name, len(frame), frame[COMPLETION].nunique(), float(lengths.mean()), int(lengths.max())])
        table = Table(["split", "rows", "distinct completions", "mean characters", "longest"], rows)
        if self.settings.scoring != "exact_match":
            return table
        counts = {name: frame[COMPLETION].value_counts() for name, frame in frames.items()}
        answers = list(counts["train"].index[:50])
        rows = [[answer, *(int(counts[name].get(answer, 0)) for name in frames)] for answer in answers]
        return Table(["answer", *frames], rows)

    def data_warnings(self, frames: dict[str, pd.DataFrame], targets: Targets) -> list[str]:
        if self.settings.scoring != "exact_match":
            return []
        train = set(frames["train"][COMPLETION])
        unseen = sorted(set(frames["test"][COMPLETION]) - train)
        return [f"test answer(s) never seen in train: {', '.join(map(repr, unseen[:10]))}"] if unseen else []

    def check_split(self, frame: pd.DataFrame, labels: Sequence[str], name: str) -> pd.DataFrame:
        require_columns(frame, SPLIT_COLUMNS, name)
        if list(labels) != [OUTPUT]:
            raise DataError(f"a {self.type} model has the one output {OUTPUT!r}, not {list(labels)}")
        result = pd.DataFrame({TEXT: frame[TEXT].astype(str), COMPLETION: frame[COMPLETION].astype(str)})
        return result.reset_index(drop=True)

    # -- the model -----------------------------------------------------------------------------

    def head_settings(self, labels: Sequence[str], train: pd.DataFrame) -> dict[str, Any]:
        return {}  # the language-model head is the pre-trained one

    def model_labels(self, model_dir: str) -> list[str]:
        return [OUTPUT]

    def trainer_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # Validation scores the loss only (no generation while training): keep the per-batch losses, and not
        # the logits, vocabulary-wide per token.
        return {"include_for_metrics": ["loss"]}, {"preprocess_logits_for_metrics": _no_logits}

    def compute_metrics(self, model_config: Any) -> Callable[[Any], dict[str, float]]:
        def compute(eval_prediction) -> dict[str, float]:
            losses = np.asarray(eval_prediction.losses, dtype=np.float64)
            mean = float(losses.mean()) if losses.size else float("nan")
            return {"perplexity": math.exp(min(mean, 50.0))}

        return compute

    # -- probe (select_model) --------------------------------------------------------------------

    def probe(self, encoder: Any, tokenizer: Any, train: pd.DataFrame, validation: pd.DataFrame) -> ProbeScore:
        """The candidate's zero-shot loss on the validation completions (negated: higher is better), a
        transferability signal that costs one forward pass per example."""
        self.prepare_tokenizer(tokenizer)
        nll, tokens = self._completion_nll(encoder, tokenizer, validation, self.config.selection.probe_max_length)
        loss = float(nll.sum() / max(tokens.sum(), 1))
        return ProbeScore("negative_loss", -loss, {"loss": loss, "perplexity": math.exp(min(loss, 50.0))})

    def _completion_nll(self, model: Any, tokenizer: Any, frame: pd.DataFrame, max_length: int):
        """Summed negative log-likelihood of each row's completion tokens given its prompt, and their number."""
        import torch

        ids, labels = self._scored_ids(model, tokenizer, frame, max_length)
        run_on = next(model.parameters()).device
        nll = np.zeros(len(ids), dtype=np.float64)
        counts = np.zeros(len(ids), dtype=np.int64)
        order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths: little padding
        batch_size = self.config.training.eval_batch_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                losses, scored = self._token_losses(
                    model,
                    _padded([ids[i] for i in rows], pad).to(run_on),
                    _padded([[1] * len(ids[i]) for i in rows], 0).to(run_on),
                    _padded([labels[i] for i in rows], NO_LABEL).to(run_on),
                )
                nll[rows] = losses.sum(dim=1).double().cpu().numpy()
                counts[rows] = (scored != NO_LABEL).sum(dim=1).cpu().numpy()
        return nll, counts

    def _scored_ids(self, model: Any, tokenizer: Any, frame: pd.DataFrame, max_length: int):
        """The model's input ids of each row and its labels (NO_LABEL where the loss does not look)."""
        raise NotImplementedError

    def _token_losses(self, model: Any, input_ids: Any, attention_mask: Any, labels: Any):
        """Per-position cross-entropy of a padded batch (0 where not scored), and the labels it scored."""
        raise NotImplementedError

    # -- test metrics --------------------------------------------------------------------------

    def test_metrics(self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        references = frame[COMPLETION].tolist()
        generated = predictions["predicted"].tolist()
        metrics: dict[str, Any] = generation_scores(references, generated)
        metrics["perplexity"] = perplexity(predictions["nll"].to_numpy(), predictions["completion_tokens"].to_numpy())
        metrics["n_examples"] = len(frame)
        shown = min(self.settings.report_samples, len(frame))
        metrics["samples"] = [
            {"prompt": self.prompt_shown(frame[TEXT].iloc[i]), "reference": references[i], "generated": generated[i]}
            for i in range(shown)
        ]
        return metrics

    def prompt_shown(self, text: str) -> str:
        """A cleaned split's prompt as the report shows it next to its generation."""
        return text

    def metric_tables(self, metrics: dict[str, Any], production: dict[str, Any] | None) -> list[tuple[str, Table]]:
        samples = metrics.get("samples") or []
        if not samples:
            return []
        production_samples = (production or {}).get("samples") or []
        columns = ["prompt", "reference", "generated", "exact"]
        if production_samples:
            columns.append("production")
        rows = []
        for i, sample in enumerate(samples):
            row = [
                _shorten(sample["prompt"]),
                _shorten(sample["reference"]),
                _shorten(sample["generated"]),
                "yes" if normalise_answer(sample["reference"]) == normalise_answer(sample["generated"]) else "no",
            ]
            if production_samples:
                row.append(_shorten(production_samples[i]["generated"]) if i < len(production_samples) else "")
            rows.append(row)
        return [("Sample generations", Table(columns, rows))]

    def prediction_columns(self, predictions: pd.DataFrame) -> dict[str, Any]:
        return {"predicted": predictions["predicted"].astype(str).to_numpy(), "nll": predictions["nll"].astype(float)}

    # -- bootstrap and baselines ---------------------------------------------------------------

    def resampled_metrics(
        self, frame: pd.DataFrame, predictions: pd.DataFrame, labels: Sequence[str], weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:meth:`test_metrics` on every resample from per-row values: exact match and ROUGE-L are means, chrF and
        BLEU corpus scores of summed per-row n-gram statistics (sacrebleu's own), perplexity a ratio of sums."""
        return resampled_generation_scores(
            frame[COMPLETION].tolist(),
            predictions["predicted"].tolist(),
            predictions["nll"].to_numpy(np.float64),
            predictions["completion_tokens"].to_numpy(np.float64),
            weights,
        )

    def baselines(self, train: pd.DataFrame | None, test: pd.DataFrame, labels: Sequence[str]) -> list[Baseline]:
        """The most frequent completion of train, for every prompt (exact match: a class's majority when the
        completions are labels). It has no likelihoods, so no perplexity: a gate on perplexity does not compare it.
        There is no linear baseline for generation."""
        source = train if train is not None else test
        counts = source[COMPLETION].astype(str).value_counts()
        answer = str(counts.index[0])
        where = "train" if train is not None else "test (no train split given)"
        predictions = pd.DataFrame(
            {
                "predicted": [answer] * len(test),
                "nll": np.full(len(test), np.nan),
                "completion_tokens": np.zeros(len(test), dtype=np.int64),
            }
        )
        description = f"always {_shorten(answer, 60)!r}, the most frequent completion of {where} ({counts.iloc[0]} of "
        return [Baseline("most_frequent", CONSTANT, f"{description}{len(source)} rows)", predictions)]

    def card_summary(self, labels: Sequence[str], metrics: dict[str, Any]) -> str:
        figures = ", ".join(
            f"{name} **{float(metrics[name]):.4f}**" for name in ("exact_match", "rouge_l", "chrf") if name in metrics
        )
        return f"{self._card_what()} On the held-out test split: {figures}."

    def _card_what(self) -> str:
        raise NotImplementedError


def _no_logits(logits: Any, labels: Any) -> Any:
    """What evaluation keeps of a batch's outputs: one zero per row, as only the loss is scored.

    An encoder-decoder's outputs besides the loss are a tuple (logits, cache, encoder states): the logits first.
    """
    first = logits[0] if isinstance(logits, (tuple, list)) else logits
    return first.new_zeros((first.shape[0], 1))


def _shorten(text: str, limit: int = 300) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _padded(rows: Sequence[Sequence[int]], value: int) -> Any:
    """Rows of ids as one tensor, right-padded with ``value`` to the longest (at least one column)."""
    import torch

    batch = torch.full((len(rows), max(max(len(row) for row in rows), 1)), value, dtype=torch.long)
    for j, row in enumerate(rows):
        batch[j, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch
