"""CLIP text encoders with a conversion-friendly forward pass.

transformers builds the causal mask with its masking utilities, which neither trace cleanly nor
convert; here the mask is a constant buffer and attention is written out, reusing the loaded
model's own layers (weights unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

# Large enough to zero a softmax weight, small enough to stay finite in float16 (max ~65504).
MASKED_SCORE = -1e4
# Checkpoints whose config says eos_token_id == 2 predate the fix in transformers PR #24773: the
# end-of-text token is then found as the largest id, the way transformers still does for them.
LEGACY_EOS_TOKEN_ID = 2


class TextEncoder(nn.Module):
    """``input_ids`` (1, S) float32 -> (hidden states, pooled output).

    ``penultimate=True`` returns the hidden states before the last layer (SDXL's
    ``hidden_embeds``) instead of the final-layer-normed last layer (``last_hidden_state``).
    ``project_pooled=True`` applies the model's ``text_projection`` to the pooled output (SDXL's
    second text encoder, ``CLIPTextModelWithProjection``).
    """

    def __init__(self, model: nn.Module, *, penultimate: bool, project_pooled: bool):
        super().__init__()
        text_model = getattr(model, "text_model", model)
        config = text_model.config
        self.token_embedding = text_model.embeddings.token_embedding
        self.position_embedding = text_model.embeddings.position_embedding
        self.layers = text_model.encoder.layers
        self.final_layer_norm = text_model.final_layer_norm
        self.projection = model.text_projection if project_pooled else None
        self.penultimate = penultimate
        self.num_heads = config.num_attention_heads
        self.eos_token_id = config.eos_token_id
        length = config.max_position_embeddings
        mask = torch.full((length, length), MASKED_SCORE).triu(1)
        self.register_buffer("causal_mask", mask[None, None], persistent=False)

    def _attention(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        batch, length, width = x.shape
        head_dim = width // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, head_dim).transpose(1, 2)

        q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5 + self.causal_mask[..., :length, :length]
        out = scores.softmax(dim=-1) @ v
        return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))

    def _end_of_text_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return ids.argmax(dim=-1)
        # The first end-of-text token (padding may reuse the same id).
        return (ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = input_ids.to(torch.int32)
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)[None]
        before_last = x
        for layer in self.layers:
            before_last = x
            x = x + self._attention(layer, layer.layer_norm1(x))
            x = x + layer.mlp(layer.layer_norm2(x))
        last = self.final_layer_norm(x)

        index = self._end_of_text_index(ids)
        gather_index = index.view(-1, 1, 1).expand(-1, 1, last.shape[-1]).to(torch.int64)
        pooled = torch.gather(last, 1, gather_index).squeeze(1)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return (before_last if self.penultimate else last), pooled
