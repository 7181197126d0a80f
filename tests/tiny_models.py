"""Small real models for tests: real architectures, random weights, saved to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from deployments.adapters.labels import ADE20K

#: Input size of the tiny model's processor (keeps CPU tests fast).
TINY_SIZE = 128


def tiny_config() -> SegformerConfig:
    settings: dict[str, Any] = {
        "hidden_sizes": [8, 16, 32, 64],
        "depths": [1, 1, 1, 1],
        "num_attention_heads": [1, 1, 2, 4],
        "decoder_hidden_size": 32,
        "num_labels": len(ADE20K),
        "id2label": dict(enumerate(ADE20K)),
        "label2id": {name: i for i, name in enumerate(ADE20K)},
    }
    return SegformerConfig(**settings)


def save_tiny_segformer(directory: Path, seed: int = 1234, size: int = TINY_SIZE) -> Path:
    try:
        from transformers import SegformerImageProcessorPil as Processor
    except ImportError:  # older transformers
        from transformers import SegformerImageProcessor as Processor  # type: ignore[assignment]

    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(tiny_config())
    # Random decoder weights give near-constant maps; sharpen the classifier so
    # label maps have many classes and real boundaries to compare.
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(25.0)
    model.save_pretrained(directory)
    Processor(size={"height": size, "width": size}).save_pretrained(directory)
    return directory
