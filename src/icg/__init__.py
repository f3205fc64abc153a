"""icg: personalized cover image generation (ICG, EMNLP 2025).

MLLM meta-token prompting, user-embedding refinement, a plug-and-play adapter for diffusers
UNets, and label-free multi-reward alignment, with CoverWorld, a simulated cover platform whose
ground truth is known, as the default data.
"""

__version__ = "0.1.0"
