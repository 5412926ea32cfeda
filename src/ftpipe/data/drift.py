"""Has the data drifted? The new cleaned train split against the one the production model was trained on.

compare_data calls :func:`check` with both splits' texts and targets; every test returns a
:class:`~ftpipe.results.DriftTest` (a statistic, a p-value where it is a test, the rule and a drifted yes/no at
the thresholds of ``config.drift``):

- **labels**, one test per target the task names (``Task.drift_targets``). The test is chosen by the target's
  dtype, here and nowhere else: a numeric target (regression scores) gets a two-sample Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``, its statistic the effect); any other (a class, or a list of classes or tags per row,
  counted one by one) a chi-square test of the 2 x k table of counts (``scipy.stats.chi2_contingency``), its
  effect Cramer's V. Drift: p below ``significance`` and the effect at least ``min_effect``, since with thousands
  of rows a difference too small to matter is significant too.
- **text length**: a two-sample KS test of the words per text (whitespace-separated), with the same rule.
- **vocabulary**: the share of the new data's word occurrences never seen in production's, and the
  Jensen-Shannon distance (base 2: 0 equal, 1 disjoint) between the two sides' frequencies of the
  :data:`TOP_WORDS` most common words of either side (the rare words are left out: their counts are mostly
  sampling noise). Both figures grow as samples shrink as much as they do with new words (two disjoint samples
  of the movie snippets: share 0.24 and distance 0.35 at 500 texts each, 0.08 and 0.10 at 4,200), so each is
  compared with its baseline, the same figure between two disjoint samples of production's data, all three
  samples (seeded) of one size: ``min(production's rows / 2, new rows, sample_rows)``. Drift: an excess over the
  baseline above ``max_unseen_excess`` / ``max_vocabulary_excess``. No p-value.
- **classifier two-sample test** (Lopez-Paz & Oquab, 2017): a classifier learns to tell the two samples apart;
  its cross-validated ROC AUC is the statistic (0.5: indistinguishable) and its p-value comes from refitting it
  on ``permutations`` seeded shuffles of which side each row came from (scikit-learn's
  ``permutation_test_score``). The issue asks for embeddings; the features are TF-IDF of words instead, with a
  logistic regression: a frozen encoder would cost this CPU step minutes per run, and TF-IDF
  already tells movie snippets from tweets at AUC 0.99 while two halves of the snippets stay at 0.5. The
  vectorizer is fitted on both samples together: it never sees which side a row is from, so the permutations
  stay valid. Drift: AUC at least ``min_auc`` and p below ``significance``. Words only (no word pairs): pairs
  made each fit 15 times slower for no better separation. 5,000 rows a side and 100 permutations take some 8 s
  on one core (the 101 cross-validated fits).

The classifier samples each side (seeded) to ``min(rows of either side, sample_rows)``; the label and length
tests are cheap and use every row. Rows found on both sides are kept: appended data shares many rows with
the old, which rightly pulls the classifier towards chance.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ftpipe.config import DriftConfig
from ftpipe.results import DriftTest

TOP_WORDS = 1000  # the words the frequency distance compares (the most common of either side)
FOLDS = 5
MIN_CLASSIFIER_ROWS = 10  # per side: fewer cannot fill FOLDS folds with both sides
# sklearn's default token pattern, so the vocabulary figures count the same words the classifier sees
_WORD = re.compile(r"(?u)\b\w\w+\b")


def check(
    old_texts: pd.Series,
    new_texts: pd.Series,
    old_targets: Mapping[str, pd.Series],
    new_targets: Mapping[str, pd.Series],
    settings: DriftConfig,
) -> list[DriftTest]:
    """Every drift test of the new data (``new_*``) against the old (production's training data).

    Args:
        old_texts, new_texts: the texts of each side, one per row.
        old_targets, new_targets: ``{name: one value per row}`` of each side's targets (``Task.drift_targets``).
        settings: the thresholds, sample size, permutations and seed.
    """
    tests = [
        label_test(name, old_targets.get(name), new_targets.get(name), settings)
        for name in sorted(set(old_targets) | set(new_targets))
    ]
    tests.append(length_test(old_texts, new_texts, settings))
    tests.extend(
        vocabulary_tests(*vocabulary_samples(old_texts, new_texts, settings.sample_rows, settings.seed), settings)
    )
    tests.append(classifier_test(*equal_samples(old_texts, new_texts, settings.sample_rows, settings.seed), settings))
    return tests


def _draw(texts: pd.Series, rows: int, rng: np.random.Generator, parts: int = 1) -> list[list[str]]:
    """``parts`` disjoint seeded samples of ``rows`` texts each."""
    picked = rng.choice(len(texts), size=rows * parts, replace=False)
    return [[str(text) for text in texts.iloc[np.sort(part)]] for part in np.split(picked, parts)]


def equal_samples(old: pd.Series, new: pd.Series, cap: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded samples of ``min(len(old), len(new), cap)`` texts from each side (the classifier's)."""
    rows = min(len(old), len(new), cap)
    rng = np.random.default_rng(seed)
    return _draw(old, rows, rng)[0], _draw(new, rows, rng)[0]


def vocabulary_samples(old: pd.Series, new: pd.Series, cap: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Two disjoint samples of ``old`` and one of ``new``, all of ``min(len(old) // 2, len(new), cap)`` texts."""
    rows = min(len(old) // 2, len(new), cap)
    rng = np.random.default_rng(seed)
    first, second = _draw(old, rows, rng, parts=2)
    return first, second, _draw(new, rows, rng)[0]


def _significant_rule(effect: str, settings: DriftConfig) -> str:
    return f"p < {settings.significance:g} and {effect} >= {settings.min_effect:g}"


def ks_test(name: str, what: str, old: np.ndarray, new: np.ndarray, settings: DriftConfig) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov test of two numeric samples: drift when significant and large enough."""
    from scipy.stats import ks_2samp

    rule = _significant_rule("KS statistic", settings)
    if not len(old) or not len(new):  # a target missing on every row of a side: nothing to test
        return DriftTest(
            name=name,
            method="two-sample Kolmogorov-Smirnov",
            statistic=0.0,
            p_value=None,
            rule=rule,
            drifted=False,
            detail=f"not run: {what} has no values on a side",
        )
    detail = f"{what}: old mean {old.mean():.3g} ({len(old)} rows), new mean {new.mean():.3g} ({len(new)} rows)"
    result = ks_2samp(old, new)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return DriftTest(
        name=name,
        method="two-sample Kolmogorov-Smirnov",
        statistic=statistic,
        p_value=p_value,
        rule=rule,
        drifted=p_value < settings.significance and statistic >= settings.min_effect,
        detail=detail,
    )


def _counts(values: pd.Series) -> Counter:
    """Occurrences of each value; a list cell (labels of a row, tags of a sentence) counts each of its items."""
    counts: Counter = Counter()
    for value in values:
        if isinstance(value, list | tuple | np.ndarray):
            counts.update(str(item) for item in value)
        else:
            counts[str(value)] += 1
    return counts


def label_test(name: str, old: pd.Series | None, new: pd.Series | None, settings: DriftConfig) -> DriftTest:
    """The target ``name`` of both sides: KS for a numeric target, else chi-square of the value counts."""
    test_name = f"label:{name}"
    if old is None or new is None:  # a target one side does not have: the data's schema changed
        side = "production's" if old is None else "the new"
        return DriftTest(
            name=test_name,
            method="presence",
            statistic=1.0,
            p_value=None,
            rule="the target is on both sides",
            drifted=True,
            detail=f"{side} train split has no target {name!r}",
        )
    if pd.api.types.is_numeric_dtype(old) and pd.api.types.is_numeric_dtype(new):
        old_values = pd.to_numeric(old).dropna().to_numpy(np.float64)
        new_values = pd.to_numeric(new).dropna().to_numpy(np.float64)
        return ks_test(test_name, f"target {name}", old_values, new_values, settings)
    return chi_square_test(test_name, _counts(old), _counts(new), settings)


def chi_square_test(name: str, old: Counter, new: Counter, settings: DriftConfig) -> DriftTest:
    """Chi-square test of homogeneity of two count vectors, with Cramer's V as the effect."""
    from scipy.stats import chi2_contingency

    values = sorted(set(old) | set(new))
    table = np.array([[old.get(v, 0) for v in values], [new.get(v, 0) for v in values]], dtype=np.float64)
    total = table.sum()
    shares = ", ".join(
        f"{value} {old.get(value, 0) / max(table[0].sum(), 1):.1%} -> {new.get(value, 0) / max(table[1].sum(), 1):.1%}"
        for value in values[:12]
    )
    detail = f"{len(values)} values; {shares}{', ...' if len(values) > 12 else ''}"
    rule = _significant_rule("Cramer's V", settings)
    if len(values) < 2 or table[0].sum() == 0 or table[1].sum() == 0:  # nothing to compare: one value, or a side empty
        drifted = table[0].sum() == 0 or table[1].sum() == 0 or len(set(old) ^ set(new)) > 0
        return DriftTest(
            name=name,
            method="chi-square",
            statistic=float(drifted),
            p_value=None,
            rule=rule,
            drifted=bool(drifted),
            detail=detail,
        )
    chi2, p_value, _, _ = chi2_contingency(table, correction=False)
    cramers_v = float(np.sqrt(chi2 / total))  # a 2-row table: min(rows, columns) - 1 = 1
    return DriftTest(
        name=name,
        method="chi-square (Cramer's V)",
        statistic=cramers_v,
        p_value=float(p_value),
        rule=rule,
        drifted=float(p_value) < settings.significance and cramers_v >= settings.min_effect,
        detail=detail,
    )


def word_counts(texts: pd.Series) -> np.ndarray:
    """Whitespace-separated words per text."""
    return texts.astype(str).str.split().str.len().fillna(0).to_numpy(np.float64)


def length_test(old: pd.Series, new: pd.Series, settings: DriftConfig) -> DriftTest:
    """KS test of the words per text."""
    return ks_test("text_length", "words per text", word_counts(old), word_counts(new), settings)


def words(texts: Sequence[str]) -> Counter:
    """Occurrences of each lower-cased word (two or more word characters) in ``texts``."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower()))
    return counts


def _vocabulary_figures(old: Sequence[str], new: Sequence[str]) -> tuple[float, float, int]:
    """The share of ``new``'s word occurrences unseen in ``old``, the distance of their common words' frequencies,
    and how many words that distance compared."""
    from scipy.spatial.distance import jensenshannon

    old_words, new_words = words(old), words(new)
    unseen = sum(count for word, count in new_words.items() if word not in old_words) / max(sum(new_words.values()), 1)
    common = {word for word, _ in old_words.most_common(TOP_WORDS)} | {w for w, _ in new_words.most_common(TOP_WORDS)}
    ordered = sorted(common)
    p = np.array([old_words.get(word, 0) for word in ordered], dtype=np.float64)
    q = np.array([new_words.get(word, 0) for word in ordered], dtype=np.float64)
    # no words on a side: as far apart as can be (jensenshannon would divide by zero)
    distance = float(jensenshannon(p, q, base=2)) if p.sum() and q.sum() else 1.0
    return unseen, distance, len(ordered)


def vocabulary_tests(
    old: Sequence[str], reference: Sequence[str], new: Sequence[str], settings: DriftConfig
) -> list[DriftTest]:
    """The share of new word occurrences unseen in ``old``, and the distance of the common words' frequencies.

    Both figures depend on the sample size as much as on the words, so each is compared with its value between
    two disjoint samples of production's own data, ``old`` and ``reference``, of the same size as ``new``: drift
    is an excess over that baseline of more than ``max_unseen_excess`` / ``max_vocabulary_excess``.
    """
    unseen, distance, compared = _vocabulary_figures(old, new)
    base_unseen, base_distance, _ = _vocabulary_figures(old, reference)
    detail = f"{len(new)} texts a side; two samples of production's data: share {base_unseen:.3g}, distance "
    detail += f"{base_distance:.3g}"
    if not len(new):
        detail = "not run: production's data has fewer than 2 rows"
    return [
        DriftTest(
            name="unseen_words",
            method="share of new word occurrences unseen in production's sample",
            statistic=unseen,
            p_value=None,
            rule=f"share > {base_unseen:.3g} (production's own) + {settings.max_unseen_excess:g}",
            drifted=bool(len(new)) and unseen > base_unseen + settings.max_unseen_excess,
            detail=detail,
        ),
        DriftTest(
            name="vocabulary",
            method=f"Jensen-Shannon distance of the {compared} most common words' frequencies",
            statistic=distance,
            p_value=None,
            rule=f"distance > {base_distance:.3g} (production's own) + {settings.max_vocabulary_excess:g}",
            drifted=bool(len(new)) and distance > base_distance + settings.max_vocabulary_excess,
            detail=detail,
        ),
    ]


def classifier_test(old: Sequence[str], new: Sequence[str], settings: DriftConfig) -> DriftTest:
    """Can a TF-IDF logistic regression tell the two samples apart? Cross-validated AUC, permutation p-value."""
    method = "classifier two-sample test (TF-IDF + logistic regression, cross-validated AUC)"
    rule = f"AUC >= {settings.min_auc:g} and p < {settings.significance:g}"
    rows = min(len(old), len(new))

    def not_run(why: str) -> DriftTest:  # chance-level AUC, no p-value, no drift
        return DriftTest(
            name="classifier", method=method, statistic=0.5, p_value=None, rule=rule, drifted=False,
            detail=f"not run: {why}",
        )

    if rows < MIN_CLASSIFIER_ROWS:
        return not_run(f"{rows} rows a side, fewer than {MIN_CLASSIFIER_ROWS}")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, permutation_test_score

    try:
        features = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform([*old, *new])
    except ValueError:  # no word seen twice: nothing for a classifier to learn from
        return not_run("no word occurs twice in the samples")
    sides = np.r_[np.zeros(len(old), dtype=np.int64), np.ones(len(new), dtype=np.int64)]
    auc, _, p_value = permutation_test_score(
        LogisticRegression(solver="liblinear", max_iter=200),
        features,
        sides,
        cv=StratifiedKFold(FOLDS, shuffle=True, random_state=settings.seed),
        scoring="roc_auc",
        n_permutations=settings.permutations,
        random_state=settings.seed,
    )
    return DriftTest(
        name="classifier",
        method=method,
        statistic=float(auc),
        p_value=float(p_value),
        rule=rule,
        drifted=float(auc) >= settings.min_auc and float(p_value) < settings.significance,
        detail=f"{rows} texts a side, {features.shape[1]} features, {FOLDS} folds, {settings.permutations} "
        "permutations",
    )


def drifted(tests: Sequence[DriftTest]) -> bool:
    """The data drifted when any test says so."""
    return any(test.drifted for test in tests)
