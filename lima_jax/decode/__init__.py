"""Decoding: `sampling` (LIMA's settings and the logit transforms), `generator` (the batched,
KV-cached decoder), `answer` (answers for conversations, a prompts file, a terminal chat),
`prompts` (prompt files) and `flags` (the decoding flags generate, select and serve share)."""
