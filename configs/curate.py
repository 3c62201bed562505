r"""Curation: choose n training conversations from a pool (filters -> selector -> quotas).

    python -m lima_jax.curate --config=configs/curate.py:PRESET --config.pool=A.json,B.jsonl \
      --out=chosen.jsonl [--report=report.html] [--removed=removed.jsonl] [--config.a.b=V ...]

Presets (`PRESET`); all run the filters exact_dedup, near_dedup, test_overlap (only when
`test_sets` is given), truncated, sanity, then:

  random          n records uniformly at random (the baseline every other preset must beat).
  longest         the n longest responses.
  quality         the n best by the transparent heuristic score (lima_jax/curate/quality.py):
                  length, structure, formatting, prompt-response relevance, voice.
  diverse         k-means (k = n) over TF-IDF+SVD prompt embeddings, one record per cluster
                  (no torch needed). On the 12K Alpaca+Dolly pool it beat a random sample
                  on both diversity figures (pairwise 0.974 vs 0.968, nearest 0.18 vs 0.24),
                  where greedy k-center did not (0.965, 0.28): in sparse LSA space k-center
                  chases prompts with rare words. ~2.5 min (k-center: seconds).
  diverse_minilm  greedy k-center over all-MiniLM-L6-v2 embeddings (pip install -r
                  requirements-curate.txt; torch CPU): there it spreads the set clearly
                  (pairwise 0.976 vs 0.926 for random; k-center radius 0.69 vs 0.80).
  lima_rules      LIMA's Stack Exchange treatment as well: links, images and HTML stripped
                  from responses (clean_markup, first), then responses of 1,200-4,096 chars,
                  no first person, no references to other answers (lima_rules); then a
                  uniform sample, as the paper sampled within each domain. clean_markup is
                  not in the other presets: it would strip answers that ARE HTML or a URL.

Examples (shared data at ../shared/data). Measured on the 12K Alpaca+Dolly pool, 2 shared
cores: 22-44 s per preset with its report; diverse_minilm ~10 min (MiniLM on CPU).

    # (4 Alpaca rows have an empty output: pool_on_error=skip lists them in the report.)
    D=../shared/data
    python -m lima_jax.curate --config=configs/curate.py:quality \
      --config.pool=$D/instruct/alpaca_random_9k.json,$D/instruct/dolly_filtered_3k.json \
      --config.pool_on_error=skip --config.n=1000 \
      --out=/tmp/quality.jsonl --report=/tmp/quality.html

    # LIMA's own mix, checked against its test prompts. The test overlap leaves 199 authors
    # rows and the sanity filter 45 nlp rows, so without quota_shortfall=fill this stops
    # with a message saying so:
    python -m lima_jax.curate --config=configs/curate.py:random \
      --config.pool=$D/lima/train.jsonl --config.test_sets=$D/lima/test.jsonl \
      --config.quotas=stackexchange=400,authors=200,wikihow=200,writingprompts=150,nlp=50 \
      --config.quota_shortfall=fill --out=/tmp/lima_mix.jsonl

Model-based presets: --config.scorer=MODEL, any model file lima_jax opens (a lima_jax
checkpoint, a Hugging Face directory, GGUF, llama2.c .bin with --config.model.tokenizer):

  ifd             as published (Li et al. 2023): the n highest instruction-following difficulty
                  (loss of the response with the prompt / without it) among those at most
                  ifd.max_ifd (1.0: above it the prompt does not help predict the response).
  loss            the n lowest mean answer NLL in the training format, L(response | prompt):
                  IFD's numerator alone. Favours answers the scorer already finds likely.
  consistency     knowledge consistency: each row read as a plain document (BOS, prompt + " " +
                  answer, the end token), as a base was pretrained; its score is the worst
                  (highest) per-token NLL over the answer's tokens and the end token. The n
                  lowest are kept: a stated fact the base knows otherwise is one very surprising
                  token, a cut-off answer a surprising end. consistency.max_nll > 0 also removes
                  rows above it as a filter (listed, with the reason). Use the BASE the choice
                  will train, not a tuned model: it is the base's knowledge being checked.
  influence       LESS-style: the n records whose loss gradient (CountSketch-projected) is
                  most similar to a target set's; --config.influence.target=FILE too.
                  Cost: one backward pass per record; per-example gradients of
                  influence.batch_size records are held at once.

    python -m lima_jax.curate --config=configs/curate.py:consistency --config.pool=POOL.jsonl \
      --config.scorer=/tmp/base_ckpt --config.n=1000 --out=/tmp/chosen.jsonl \
      --scores=/tmp/scores.jsonl

--scores=F.jsonl writes one line per pool row read (origin, source, score, chosen, and the
stage and reason of a removed row): see docs/curation.md.

The config is locked: a misspelled or wrongly typed override fails at start-up.
"""
import ml_collections

_COMMON_FILTERS = "exact_dedup,near_dedup,test_overlap,truncated,sanity"
PRESETS = ("random", "longest", "quality", "diverse", "diverse_minilm", "lima_rules", "ifd",
           "loss", "consistency", "influence")


def get_config(preset: str = "quality") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown curate preset {preset!r}; choose one of {PRESETS}")
  c = ml_collections.ConfigDict()
  c.pool = ""  # Comma-separated LIMA JSONL / Alpaca-Dolly JSON(L) files to choose from.
  c.pool_on_error = "raise"  # 'raise': stop at a malformed row; 'skip': leave it out (listed).
  c.n = 1000  # How many to choose (ignored when quotas are given: their sum is used).
  c.seed = 0  # Drives the random selector, k-means, SVD and the report's random baseline.
  c.allow_fewer = False  # When fewer than n pass the filters: error (False) or take them all.

  # Filters run in this order; names: clean_markup, exact_dedup, near_dedup, test_overlap,
  # truncated, sanity, lima_rules (see lima_jax/curate/filters.py and dedup.py).
  c.filters = _COMMON_FILTERS
  c.test_sets = ""  # Comma-separated prompt files (e.g. lima/test.jsonl) for test_overlap.

  c.exact_dedup = ml_collections.ConfigDict()
  c.exact_dedup.field = "conversation"  # 'conversation' | 'prompt' | 'response'.
  c.near_dedup = ml_collections.ConfigDict()
  c.near_dedup.threshold = 0.8  # Estimated Jaccard of word n-grams from which a pair is near.
  c.near_dedup.ngram = 3  # Shingle length in words.
  c.near_dedup.num_perm = 128  # MinHash permutations (accuracy ~ 1/sqrt(num_perm)).
  c.near_dedup.field = "conversation"  # 'conversation' | 'prompt' | 'response'.
  c.test_overlap = ml_collections.ConfigDict()
  c.test_overlap.threshold = 0.7  # Jaccard from which a pool prompt is near a test prompt.
  c.test_overlap.ngram = 3
  c.test_overlap.num_perm = 128
  c.lima_rules = ml_collections.ConfigDict()
  c.lima_rules.min_chars = 1200  # LIMA: Stack Exchange answers of 1,200-4,096 characters.
  c.lima_rules.max_chars = 4096
  c.truncated = ml_collections.ConfigDict()
  # Also remove prose answers that end without punctuation (off: Dolly's human answers often
  # omit the final period; the quality score penalises it instead).
  c.truncated.require_end_punctuation = False
  c.truncated.min_words = 20  # With it: shorter answers may end bare ("Paris")...
  c.truncated.min_last_line_words = 8  # ...and so may shorter last lines (verse, labels).
  # Also words cut in half ("... and th"), judged by the pool's own vocabulary. Off: on human
  # pools it flags real rare words that begin common ones (filters.truncated says which).
  c.truncated.mid_word = False
  c.sanity = ml_collections.ConfigDict()
  c.sanity.min_alpha_ratio = 0.5  # Letters / non-space characters of the prose.
  c.sanity.min_ascii_ratio = 0.9  # ASCII / non-space characters: a proxy for English.
  c.sanity.min_chars = 20  # Ratios are not judged below this many characters.
  c.sanity.min_unique_line_ratio = 0.5  # Distinct / all lines, for responses of 5+ lines.

  c.selector = preset.removesuffix("_minilm") if preset != "lima_rules" else "random"
  # (random, longest, quality, diverse, ifd, loss, consistency, influence: see
  # lima_jax/curate/selectors.py)
  c.quality = ml_collections.ConfigDict()
  c.quality.target_chars = 1200  # Length component reaches 1.0 here...
  c.quality.max_chars = 4096  # ...and falls as max_chars/chars beyond this.
  c.quality.weights = ml_collections.ConfigDict(
      dict(length=1.0, structure=1.0, formatting=1.0, relevance=1.0, voice=1.0))
  c.ifd = ml_collections.ConfigDict()
  c.ifd.max_ifd = 1.0  # IFD above this (the prompt does not help predict the answer): left out.
  c.consistency = ml_collections.ConfigDict()
  # Answer tokens not judged at the start of each answer: its first tokens follow the prompt
  # directly and are surprising for how the answer opens ("Sure!", a list marker, a name
  # the prompt did not announce), not for what it states. 0 judges them all.
  c.consistency.skip_first = 0
  c.consistency.max_nll = 0.0  # > 0: rows whose worst token NLL is above it are removed.
  # The token a document ends with in the scorer's pretraining, scored after the answer:
  # 'eos' (lima_jax pretraining, most bases), 'bos' (llama2.c bases, whose documents are only
  # separated by BOS) or 'none' (do not judge where the answer ends).
  c.consistency.end = "eos"
  c.influence = ml_collections.ConfigDict()
  c.influence.target = ""  # Conversation file(s) of examples like the ones wanted.
  c.influence.dim = 1024  # CountSketch dimensions of the gradient features.
  c.influence.batch_size = 4  # Per-example gradients held at once (memory: this x params).
  # The model of the ifd, loss, consistency and influence selectors: any model file
  # lima_jax.formats.model_file opens; how it is read is under `model`.
  c.scorer = ""
  c.model = ml_collections.ConfigDict()
  c.model.tokenizer = ""  # '' = the scorer's own; else a SentencePiece/llama2.c/tokenizer.json.
  c.model.max_len = 2048  # Conversations are trimmed to this many tokens (as in training).
  # A base model without EOT grows its vocabulary to a multiple of this, as the training run on
  # the choice will (configs/lima.py model.vocab_multiple): padding rows change the softmax.
  c.model.vocab_multiple = 128
  c.model.batch_size = 8  # Sequences per forward pass (ifd, loss, consistency).
  c.diverse = ml_collections.ConfigDict()
  # 'kcenter' (greedy coverage) | 'kmeans' (one per cluster); see the presets above.
  c.diverse.method = "kmeans" if preset == "diverse" else "kcenter"

  c.embed = ml_collections.ConfigDict()
  c.embed.name = "minilm" if preset == "diverse_minilm" else "tfidf"  # 'tfidf' | 'minilm'.
  c.embed.field = "prompt"  # What to embed: 'prompt' | 'response' | 'conversation'.
  c.embed.dim = 128  # TF-IDF SVD dimensions (MiniLM is 384).
  c.embed.batch_size = 64  # MiniLM batch size.
  c.embed.max_tokens = 256  # MiniLM truncation (the model was trained with 256).

  # Quotas: 'source=count,...'; each source is selected within itself (see quotas.py).
  c.quotas = ""
  c.quota_shortfall = "error"  # 'error' | 'fill' (from the other named sources).

  c.report = ml_collections.ConfigDict()
  c.report.diversity = True  # Embed the candidates for the diversity figures.
  # k-means clusters of the candidates for the coverage figure (0 = as many as chosen: slow,
  # a k-means of that many clusters over the candidates).
  c.report.clusters = 100
  c.report.examples = 5  # Top and bottom examples shown.

  if preset == "lima_rules":
    c.filters = "clean_markup," + _COMMON_FILTERS + ",lima_rules"
  return c
