"""An OpenAI-compatible server for a checkpoint: chat and text completions, continuously batched.

Command line: `python -m lima_jax.serve --checkpoint=CKPT` (its flags: `__main__`). Modules:
`api` (the FastAPI app and readiness), `protocol` (OpenAI's request bodies as read here, the
error shape), `scheduler` (the engine thread: queue, slots, stops), `engine` (decode slots over
one KV cache and the jitted prefill, insert and step), `stream` (one JSON body or Server-Sent
Events), `text` (incremental detokenization with stop strings) and `metrics` (Prometheus).
Endpoints, their semantics and figures under load: docs/serving.md.
"""
