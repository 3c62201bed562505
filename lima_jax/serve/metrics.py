"""The server's Prometheus metrics (prefix `lima_jax:`, as vLLM's are `vllm:`).

Each server has its own registry, so several apps in one process (tests) do not collide and
`/metrics` shows only this server's series.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_P = "lima_jax:"
# Latencies from milliseconds (a token on an accelerator) to minutes (a long CPU answer).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0, 300.0)


class Metrics:
  def __init__(self):
    r = self.registry = CollectorRegistry()
    self.requests_running = Gauge(_P + "num_requests_running",
                                  "HTTP requests being answered (queued or decoding).", registry=r)
    self.requests_waiting = Gauge(_P + "num_requests_waiting",
                                  "Choices queued for a decode slot.", registry=r)
    self.slots_in_use = Gauge(_P + "slots_in_use", "Decode slots holding a choice.", registry=r)
    self.slots = Gauge(_P + "slots", "Decode slots in all.", registry=r)
    self.rejected = Counter(_P + "requests_rejected", "Requests refused with 429 (full queue).",
                            registry=r)
    self.aborted = Counter(_P + "requests_aborted", "Choices cancelled (client gone) before "
                           "they finished, queued or decoding.", registry=r)
    self.prompt_tokens = Counter(_P + "prompt_tokens", "Prompt tokens prefilled.", registry=r)
    self.generation_tokens = Counter(_P + "generation_tokens", "Tokens generated.", registry=r)
    self.ttft = Histogram(_P + "time_to_first_token_seconds", "Arrival to first token.",
                          buckets=_LATENCY, registry=r)
    self.itl = Histogram(_P + "inter_token_latency_seconds", "Time between two tokens of one "
                         "choice.", buckets=_LATENCY, registry=r)
    self.e2e = Histogram(_P + "e2e_request_latency_seconds", "Arrival to the last token of a "
                         "choice.", buckets=_LATENCY, registry=r)
    self.compiles = Gauge(_P + "compiles", "Compilations of the engine's jitted functions; flat "
                          "after warm-up.", registry=r)
