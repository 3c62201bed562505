"""An OpenAI-compatible server for a checkpoint: chat and text completions with
logprobs, continuously batched.

Command line: `python -m lima_jax.serve --checkpoint=CKPT` (its flags: `__main__`). Modules:
`api` (the FastAPI app, its routes and readiness), `completion` (one generation request: its
choices queued together, one JSON body or a stream), `protocol` (OpenAI's request bodies as
read here, strictly; the error shape), `failures` (every error in that shape, and the catch-all
500), `openapi` (the document as the server really behaves), `scheduler` (the engine thread:
queue, slots, stops), `engine` (decode slots over one KV cache and the jitted prefill, insert,
step and prompt scoring), `logprobs` (the model's own logprobs and their wire shapes),
`stream` (Server-Sent Events), `text` (incremental detokenization with stop strings) and
`metrics` (Prometheus). Endpoints, their semantics and figures under load: docs/serving.md.
"""
