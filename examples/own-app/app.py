"""A small Ray Serve app of your own, deployed by rayfleet like the translator:

    rayfleet serve examples/own-app/service.yaml
    curl -X POST http://127.0.0.1:8000/sentiment/predict -H 'Content-Type: application/json' \
         -d '{"text": "a great, friendly place"}'

A sentiment scorer: a bag-of-words logistic model whose weights (model.json) each
replica loads once, a FastAPI ingress, and @serve.batch merging concurrent requests
into one scoring call. Nothing here is rayfleet's: any Serve app deploys the same way.
"""

import json
import math
import os
import re
from pathlib import Path

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

# No "from __future__ import annotations" here: FastAPI reads the handlers' annotations at import.

api = FastAPI(title="sentiment", description="Scores English text: 1 = positive, 0 = negative.")
WORD = re.compile(r"[a-z']+")


class ScoreRequest(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)


class Prediction(BaseModel):
    label: str
    score: float
    version: str


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class Sentiment:
    def __init__(self, threshold: float = 0.5):
        model = json.loads((Path(__file__).parent / "model.json").read_text())
        self.bias = float(model["bias"])
        self.weights = {w: float(v) for w, v in model["weights"].items()}
        self.threshold = threshold
        self.version = os.environ.get("APP_VERSION", "1")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score(self, texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            z = self.bias + sum(self.weights.get(w, 0.0) for w in WORD.findall(text.lower()))
            out.append(1.0 / (1.0 + math.exp(-z)))
        return out

    @api.post("/predict", response_model=Prediction)
    async def predict(self, req: ScoreRequest) -> Prediction:
        if not WORD.search(req.text.lower()):
            raise HTTPException(422, "the text has no words")
        s = await self.score(req.text)
        return Prediction(label="positive" if s >= self.threshold else "negative", score=round(s, 4),
                          version=self.version)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"ok": True, "version": self.version}


def build(args: dict) -> serve.Application:
    """Builder: service.yaml's app.args reach it (``threshold``)."""
    return Sentiment.bind(threshold=float(args.get("threshold", 0.5)))


deployment = Sentiment.bind()
