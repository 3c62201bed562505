"""Model files: `model_file.open` for any of them; lima_jax checkpoints (and the checkpoints that
ended each epoch), Hugging Face read (`hf`) and export (`hf_export`, its card and tokenizer
files), GGUF and llama2.c."""
