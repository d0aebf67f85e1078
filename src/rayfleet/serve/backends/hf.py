"""Backend ``transformers``: Hugging Face seq2seq ``generate`` with PyTorch."""

from __future__ import annotations

import torch

from rayfleet.errors import ModelError
from rayfleet.serve.backends.base import BackendSettings, count_tokens, model_limits

__all__ = ["TransformersBackend", "pick_device"]


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device is 'cuda' but no CUDA GPU is visible to this replica.",
                         hint="Set device: cpu (or auto), or give the replica num_gpus: 1.")
    return device


class TransformersBackend:
    """Loads with ``AutoTokenizer``/``AutoModelForSeq2SeqLM``; greedy or beam search."""

    name = "transformers"
    output_tokens = 0

    def __init__(self, settings: BackendSettings):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.settings = settings
        self.device = pick_device(settings.device)
        # Serve sets OMP_NUM_THREADS=1 in replicas; use the replica's CPU budget.
        torch.set_num_threads(max(1, settings.num_threads))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(settings.model)
        except (OSError, ValueError) as e:
            raise ModelError(f"Could not load model {settings.model!r}: {e}",
                             hint="Pass a local directory saved with save_pretrained, "
                                  "e.g. --model /path/to/opus-mt-en-fr") from e
        self.model.to(self.device).eval()
        # generate() indexes past the position tables beyond these (IndexError): bound both.
        limits = model_limits(settings.model, self.model.config, self.tokenizer, settings.model,
                              settings.max_new_tokens)
        self.max_input_tokens = limits.max_input_tokens
        self.max_new_tokens = limits.max_new_tokens
        # max_new_tokens (bounded by it) replaces the config's max_length: no "both set" warning per call.
        self.model.generation_config.max_length = None

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    @torch.inference_mode()
    def translate(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_input_tokens)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model.generate(
            **batch,
            num_beams=self.settings.num_beams,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        generated = out[:, 1:]   # after the decoder's start token
        special = [t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None]
        self.output_tokens += int((~torch.isin(generated, torch.tensor(special, device=generated.device))).sum())
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "threads": torch.get_num_threads(),
            "max_input_tokens": self.max_input_tokens,
            "max_new_tokens": self.max_new_tokens,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
