"""Segment Anything (ViT image encoder, prompt encoder, two-way mask decoder) and its checkpoint import."""
from jaxdiff.models.sam import image_encoder, mask_decoder, model, prompt_encoder  # noqa: F401  (registers "sam")
from jaxdiff.models.sam.model import Sam, jitted_fns, postprocess_masks, preprocess  # noqa: F401
