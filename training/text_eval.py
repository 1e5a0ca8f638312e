"""Text metrics of the training job and the studies: generation quality, diversity and the
baselines a trained model must beat.

Generation quality is BLEU and chrF (sacrebleu) and ROUGE-L F1 (an LCS over whitespace tokens,
computed here: rouge-score would pull nltk and absl into the environment for one formula).
The attention-map picture is `models.attention_map.attention_png`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 of one pair: longest common subsequence of lower-cased word tokens."""
    hyp, ref = hypothesis.lower().split(), reference.lower().split()
    if not hyp or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)
    for word in hyp:
        current = [0]
        for j, other in enumerate(ref):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF, mean ROUGE-L F1 (x100, like BLEU)."""
    import sacrebleu

    return {
        "bleu": float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score),
        "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score),
        "rouge_l": 100
        * float(np.mean([rouge_l(h, r) for h, r in zip(hypotheses, references, strict=True)])),
    }


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over lower-cased words of `texts` (diversity, 0..1)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words = text.lower().split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def classify_baselines(
    train: tuple[Sequence[str], Sequence[int]], test: tuple[Sequence[str], Sequence[int]]
) -> dict[str, float]:
    """Test accuracy of the majority class and of naive Bayes on character 1-3-grams, both
    fitted on the training split: a model that learned nothing cannot beat the first."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    labels = np.asarray(test[1])
    majority = Counter(train[1]).most_common(1)[0][0]
    vectorizer = CountVectorizer(analyzer="char_wb", ngram_range=(1, 3))
    bayes = MultinomialNB().fit(vectorizer.fit_transform(train[0]), train[1])
    predicted = bayes.predict(vectorizer.transform(test[0]))
    return {
        "baseline_majority_accuracy": float(np.mean(labels == majority)),
        "baseline_char_ngram_accuracy": float(np.mean(predicted == labels)),
    }
