"""The translator's own Prometheus metrics, recorded by every replica through Ray Serve's metrics API
(``ray.serve.metrics``: Serve adds the ``application``, ``deployment`` and ``replica`` labels; Ray's
metrics agent on the replica's node exports them, prefixed ``ray_``).

What Serve already measures is not measured again here: requests by HTTP status code and their latency
(``ray_serve_num_http_requests_total``, ``ray_serve_http_request_latency_ms``, from HAProxy's log in
rayfleet's HAProxy mode), the replica's requests in flight (``ray_serve_replica_processing_queries``).
These are what only the replica knows: texts, batches, the model's time, the queue in front of it.

Every metric carries ``service`` and ``version`` (the spec's ``version``, else the model).
"""

from __future__ import annotations

__all__ = ["TranslatorMetrics", "NAMES"]

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BATCH_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

# As Prometheus shows them (Ray's prefix; counters end in _total, histograms in _bucket/_sum/_count).
NAMES = {
    "texts": "ray_rayfleet_translator_texts_total",
    "output_tokens": "ray_rayfleet_translator_output_tokens_total",
    "batches": "ray_rayfleet_translator_batches_total",
    "batch_texts": "ray_rayfleet_translator_batch_texts_total",
    "model_seconds": "ray_rayfleet_translator_model_seconds_total",
    "failed": "ray_rayfleet_translator_failed_texts_total",
    "truncated": "ray_rayfleet_translator_truncated_texts_total",
    "batch_size": "ray_rayfleet_translator_batch_size",
    "batch_seconds": "ray_rayfleet_translator_batch_seconds",
    "queue": "ray_rayfleet_translator_queue_depth",
}


class TranslatorMetrics:
    """One replica's recorders. Created in the replica (Serve's context names it)."""

    def __init__(self, service: str, version: str):
        from ray.serve import metrics

        keys = ("service", "version")
        tags = {"service": service, "version": version}
        self.texts = metrics.Counter("rayfleet_translator_texts", tag_keys=keys,
                                     description="Texts translated (each text of a request counts once).")
        self.output_tokens = metrics.Counter("rayfleet_translator_output_tokens", tag_keys=keys,
                                             description="Target tokens the model generated (</s> not counted).")
        self.failed = metrics.Counter("rayfleet_translator_failed_texts", tag_keys=keys,
                                      description="Texts the model failed on (the request got a 500).")
        self.truncated = metrics.Counter("rayfleet_translator_truncated_texts", tag_keys=keys,
                                         description="Texts with a sentence longer than the model's window, cut.")
        # Exact sums as counters: Ray exports a histogram's _sum from its buckets' midpoints, not the values.
        self.batches = metrics.Counter("rayfleet_translator_batches", tag_keys=keys,
                                       description="Model calls (mean batch: batch_texts / batches).")
        self.batch_texts = metrics.Counter("rayfleet_translator_batch_texts", tag_keys=keys,
                                           description="Texts given to the model, summed over its calls.")
        self.model_seconds = metrics.Counter("rayfleet_translator_model_seconds", tag_keys=keys,
                                             description="Seconds the model ran (its rate: the share of time busy).")
        self.batch_size = metrics.Histogram("rayfleet_translator_batch_size", boundaries=BATCH_SIZES, tag_keys=keys,
                                            description="Texts per model call (its distribution; the mean from "
                                                        "the counters).")
        self.batch_seconds = metrics.Histogram("rayfleet_translator_batch_seconds", boundaries=BATCH_SECONDS,
                                               tag_keys=keys, description="The model's time per batch, in seconds.")
        self.queue = metrics.Gauge("rayfleet_translator_queue_depth", tag_keys=keys,
                                   description="Texts waiting for the model after the last batch started.")
        for m in (self.texts, self.output_tokens, self.failed, self.truncated, self.batches, self.batch_texts, self.model_seconds,
                  self.batch_size, self.batch_seconds, self.queue):
            m.set_default_tags(dict(tags))   # (Serve adds its tags to the dict it is given)

    def batch(self, size: int, seconds: float, waiting: int, tokens: int | None = None) -> None:
        """A model call of ``size`` texts took ``seconds`` and generated ``tokens`` (None: the backend does not
        count them); ``waiting`` texts queued behind it."""
        if tokens:
            self.output_tokens.inc(tokens)
        self.batches.inc()
        self.batch_texts.inc(size)
        self.model_seconds.inc(seconds)
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.queue.set(waiting)

    def outcomes(self, done: int, failed: int, truncated: int) -> None:
        """One request's texts: translated, failed, cut."""
        if done:
            self.texts.inc(done)
        if failed:
            self.failed.inc(failed)
        if truncated:
            self.truncated.inc(truncated)
