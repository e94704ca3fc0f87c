"""The safety checker as one branch-free graph, with the reference's inputs and outputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Added to every concept score once any "special care" concept fires (diffusers' rule).
SPECIAL_CARE_BONUS = 0.01


def _cosine_similarity(embeds: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeds, dim=-1) @ F.normalize(concepts, dim=-1).transpose(0, 1)


class SafetyChecker(nn.Module):
    """(clip_input, images, adjustment) -> (filtered_images, has_nsfw_concepts, concept_scores).

    Same scoring as diffusers' ``StableDiffusionSafetyChecker``; as in Apple's reference,
    ``adjustment`` shifts the special-care scores (raising it makes the filter stricter).
    Flagged images are zeroed by a multiply rather than an indexed write, so the graph has no
    data-dependent control flow. ``has_nsfw_concepts`` is 1.0 or 0.0.
    """

    def __init__(self, checker: nn.Module):
        super().__init__()
        self.vision_model = checker.vision_model
        self.visual_projection = checker.visual_projection
        self.concept_embeds = checker.concept_embeds
        self.concept_embeds_weights = checker.concept_embeds_weights
        self.special_care_embeds = checker.special_care_embeds
        self.special_care_embeds_weights = checker.special_care_embeds_weights

    def forward(self, clip_input: torch.Tensor, images: torch.Tensor, adjustment: torch.Tensor):
        pooled = self.vision_model(clip_input).pooler_output
        embeds = self.visual_projection(pooled)
        special_scores = (_cosine_similarity(embeds, self.special_care_embeds)
                          - self.special_care_embeds_weights + adjustment)
        special_care = (special_scores > 0).any(dim=1, keepdim=True).to(embeds.dtype)
        concept_scores = (_cosine_similarity(embeds, self.concept_embeds)
                          - self.concept_embeds_weights + special_care * SPECIAL_CARE_BONUS)
        has_nsfw = (concept_scores > 0).any(dim=1).to(images.dtype)
        keep = (1.0 - has_nsfw).view(-1, *([1] * (images.dim() - 1)))
        return images * keep, has_nsfw.view(-1, 1, 1, 1), concept_scores
