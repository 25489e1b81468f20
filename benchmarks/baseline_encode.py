"""The baseline: InstructorEmbedding 1.0.1's ``INSTRUCTOR.encode``, re-implemented on the modern stack.

fp32; one ``encode`` per call; rows sorted by -len(text) (characters) and cut into batches of 32; each batch
tokenized with the Hugging Face fast tokenizer, padded to its longest row (truncation at 512), run through a
plain ``T5EncoderModel`` forward; mean pooling over the attention mask with the first k instruction tokens
zeroed per row (k = tokens(instruction.strip()) - 1, 0 if k <= 1); Dense; L2 normalize; every batch copied to the
host (``convert_to_numpy``). No token budget, no cross-call batching. This is the baseline the speed-ups are
measured against, so it is deliberately not optimised. (Result keys call it ``seed``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from handler.model_directory import load_dense_layers, read_model_directory

Pair = tuple[str, str]


class BaselineEncoder:
    """InstructorEmbedding 1.0.1's encode, on the modern stack (fp32, batches of 32)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 32) -> None:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        files = read_model_directory(model_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(files.tokenizer_file), pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        )
        self.model = transformers.T5EncoderModel.from_pretrained(
            files.transformer_dir, dtype=torch.float32, local_files_only=True,
        ).to(self.device).eval()
        self.dense = torch.nn.Sequential(*load_dense_layers(files)).to(self.device).eval()
        self.attn_implementation = str(self.model.config._attn_implementation)

    def encode(self, pairs: Sequence[Pair]) -> np.ndarray:
        """float32 unit vectors in input order."""
        order = np.argsort([-len(text) for _, text in pairs], kind="stable")
        chunks = []
        for start in range(0, len(pairs), self.batch_size):
            chunks.append(self._encode_batch([pairs[i] for i in order[start:start + self.batch_size]]))
        vectors = np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def _encode_batch(self, batch: Sequence[Pair]) -> np.ndarray:
        joined = [(instruction + text.strip()).strip() for instruction, text in batch]
        features = self.tokenizer(joined, padding=True, truncation="longest_first", max_length=512,
                                  return_tensors="pt")
        instructions = self.tokenizer([instruction.strip() for instruction, _ in batch], padding=True,
                                      truncation="longest_first", max_length=512, return_tensors="pt")
        starts = instructions["attention_mask"].sum(dim=1) - 1
        starts = torch.where(starts <= 1, torch.zeros_like(starts), starts)
        input_ids = features["input_ids"].to(self.device)
        attention = features["attention_mask"].to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            positions = torch.arange(attention.shape[1], device=self.device)[None, :]
            mask = (attention * (positions >= starts.to(self.device)[:, None])).unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(self.dense(pooled), p=2, dim=1)
        return vectors.cpu().numpy()
