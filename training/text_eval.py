"""Text generation metrics of the training job.

Generation quality is BLEU and chrF (sacrebleu) and ROUGE-L F1 (an LCS over whitespace tokens,
computed here: rouge-score would pull nltk and absl into the environment for one formula).
The attention-map picture is `models.attention_map.attention_png`.
"""

from __future__ import annotations

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
