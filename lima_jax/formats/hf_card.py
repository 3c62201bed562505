"""The model card (README.md) `convert to-hf` writes beside the weights: what they are, and how
their decoding relates to LIMA's (the penalty that transformers and vLLM count differently)."""
from lima_jax.formats import hf_tokenizer_files as hf_tokenizer
from lima_jax.model import transformer as model_lib
from lima_jax.model.config import ModelConfig
from lima_jax.decode.sampling import LIMA


_ARCH_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


def model_card(cfg: ModelConfig, dtype: str) -> str:
  """README.md of an export: what the weights are and how its decoding relates to LIMA's."""
  return f"""# A lima_jax fine-tune (LIMA format)

Exported by `python -m lima_jax.convert to-hf`: a {_ARCH_NAMES[cfg.arch]}-architecture model
({model_lib.param_count(cfg):,} parameters, {cfg.n_layers} layers, context {cfg.max_seq_len}),
weights in {dtype}. Conversations are rendered as in training: BOS, then every utterance
followed by the end-of-turn token (the tokenizer's `eos_token`); `apply_chat_template` with
`add_generation_prompt=True` gives the exact ids lima_jax decodes from. Text is never parsed
for special tokens in training: a user who types the end-of-turn token's text gets ordinary
text here too, because the token's text form is `{hf_tokenizer.EOT_TEXT}` (built around U+E000, a
private-use character).

## Decoding

LIMA decodes with nucleus sampling (top_p {LIMA.top_p}) at temperature {LIMA.temperature} and a
repetition penalty of {LIMA.repetition_penalty} on the tokens generated so far, at most
{LIMA.max_new_tokens} new tokens. transformers' `repetition_penalty` (and vLLM's) also counts
every token of the prompt, so the same number gives other answers. `generation_config.json`
therefore ships LIMA's sampling with **repetition_penalty 1.0** (no penalty): transformers
`generate` with it, and `do_sample=False`, gives exactly the tokens of
`python -m lima_jax.generate --greedy --repetition_penalty=1`.

To reproduce LIMA's penalty in transformers, count only the answer's tokens:

```python
from transformers import RepetitionPenaltyLogitsProcessor
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
out = model.generate(torch.tensor([prompt]), logits_processor=[
    RepetitionPenaltyLogitsProcessor({LIMA.repetition_penalty}, prompt_ignore_length=len(prompt))])
```

With `do_sample=False` this equals `lima_jax.generate --greedy` (penalty {LIMA.repetition_penalty})
token for token; sampled answers follow the same distribution, not the same draws (the random
streams differ).
"""
