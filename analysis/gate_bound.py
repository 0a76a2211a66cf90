"""How far can any gate over what the small model knows get beyond max-prob?

Reads two `hybrid reward collect` directories: training data (the project's prompts) and an
evaluation collection (HumanEval). For each, it ranks positions by how likely the cloud's
greedy token differs, and prints ROC-AUC and the share of positions a gate must consult to
flag 90% (75%) of the disagreements, for:
  - the simple gates (max-prob, entropy, margin);
  - logistic regression and gradient-boosted trees trained on the training data, over the
    distribution's scalars, context (the previous positions' scalars), lookahead (the next
    positions' scalars: what a loop that delays its decision by a token or two would know),
    and the hidden state and token embedding (PCA);
  - the same trees trained on half of the HumanEval problems and scored on the other half,
    and the other way round: an optimistic bound, since they see the evaluation distribution.

    pip install numpy safetensors scikit-learn
    python3 analysis/gate_bound.py ~/.cache/hybrid-assistant/reward/q05-q15 \
        ~/.cache/hybrid-assistant/reward/humaneval-q05-q15
"""
import glob
import os
import sys
import warnings

import numpy as np
from safetensors.numpy import load_file
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

warnings.filterwarnings("ignore")


def load(directory):
    shards = [load_file(p) for p in sorted(glob.glob(os.path.join(directory, "shard-*.safetensors")))]
    data = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    order = np.lexsort((data["position"], data["prompt"]))
    return {k: v[order] for k, v in data.items()}


def scalars(d):
    """log p, top-1 p, margin, entropy (as collected) and log(1 - top-1 p), as the head reads them."""
    f = d["features"].astype(np.float64)
    return np.c_[f, np.log(np.maximum(1 - f[:, 1], 0) + 1e-6)]


def context(d):
    """What the loop knows of the positions before: their top-1 p and entropy (1 to 3 back),
    the mean entropy so far, and the position (log)."""
    f = d["features"].astype(np.float64)
    n, prompt = len(f), d["prompt"]
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(np.r_[True, prompt[1:] != prompt[:-1]], idx, 0))

    def back(x, k, fill):
        y = np.roll(x, k)
        y[idx - k < start] = fill
        return y

    cols = [back(f[:, c], k, fill) for k in (1, 2, 3) for c, fill in ((1, 1.0), (3, 0.0))]
    csum = np.cumsum(f[:, 3])
    before = csum - f[:, 3] - np.where(start > 0, csum[start - 1], 0.0)
    cols.append(np.where(idx > start, before / np.maximum(idx - start, 1), 0.0))
    cols.append(np.log1p(d["position"].astype(np.float64)))
    return np.stack(cols, 1)


def lookahead(d):
    """What the small model knows one and two tokens later, having taken its own token: the
    next positions' top-1 p, entropy and margin."""
    f = d["features"].astype(np.float64)
    n, prompt, idx = len(f), d["prompt"], np.arange(len(f))
    cols = []
    for k in (1, 2):
        j = np.minimum(idx + k, n - 1)
        inside = (idx + k < n) & (prompt[j] == prompt)
        cols += [np.where(inside, f[j, c], fill) for c, fill in ((1, 1.0), (3, 0.0), (2, 1.0))]
    return np.stack(cols, 1)


def consult_share(suspicion, disagree, recall):
    order = np.argsort(-suspicion)
    found = np.cumsum(disagree[order])
    return (np.searchsorted(found, np.ceil(recall * disagree.sum())) + 1) / len(disagree)


def row(name, suspicion, disagree):
    print(f"{name:44s} ROC-AUC {roc_auc_score(disagree, suspicion):.4f}   90%: {consult_share(suspicion, disagree, 0.9):6.2%}   75%: {consult_share(suspicion, disagree, 0.75):6.2%}")


def main(train_dir, eval_dir):
    train, test = load(train_dir), load(eval_dir)
    y_tr, y_te = (train["agree"] == 0).astype(int), (test["agree"] == 0).astype(int)
    print(f"training: {len(y_tr)} positions, {y_tr.mean():.2%} disagree; evaluation: {len(y_te)} positions "
          f"of {len(np.unique(test['prompt']))} problems, {y_te.mean():.2%} disagree")
    s_te = scalars(test)
    row("max-prob", -s_te[:, 1], y_te)
    row("entropy", s_te[:, 3], y_te)
    row("margin (top-1 - top-2)", -s_te[:, 2], y_te)
    hidden, embedding = PCA(32, random_state=0).fit(train["hidden"].astype(np.float32)), PCA(16, random_state=0).fit(train["embedding"].astype(np.float32))

    def inputs(d):
        s, c = scalars(d), context(d)
        return {"scalars": s, "scalars+context": np.c_[s, c], "scalars+context+lookahead": np.c_[s, c, lookahead(d)],
                "scalars+context+hidden+embedding": np.c_[s, c, hidden.transform(d["hidden"].astype(np.float32)), embedding.transform(d["embedding"].astype(np.float32))]}

    x_tr, x_te = inputs(train), inputs(test)
    for k in x_tr:
        for name, model in (("logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))), ("trees", HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0))):
            model.fit(x_tr[k], y_tr)
            row(f"{name}, {k}", model.predict_proba(x_te[k])[:, 1], y_te)
    half = (test["prompt"] % 2) == 0
    for k in ("scalars+context", "scalars+context+hidden+embedding"):
        s = np.zeros(len(y_te))
        for part in (half, ~half):
            model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(x_te[k][~part], y_te[~part])
            s[part] = model.predict_proba(x_te[k][part])[:, 1]
        row(f"trees on HumanEval halves, {k}", s, y_te)


if __name__ == "__main__":
    main(*sys.argv[1:3])
