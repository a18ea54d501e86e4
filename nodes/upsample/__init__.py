"""HiFI offline frame-rate upsampling: one v-parameterised pixel diffusion model, patch-based cascade with
MultiDiffusion merging (``cascade``), the network and checkpoints (``model``), the node, the ``evpipe upsample``
command (``cli``) and the evaluation plugin (``evaluation``)."""

# The shipped default checkpoint: ``tiny`` fine-tuned on real video clips at 640 px (``tiny-real``), then again at
# the crop scales the 3-level cascade feeds it (checkpoints/tiny-real-scales.json says how; each chosen on the
# validation clips, benchmarks/RESULTS.md "HiFI fine-tuned on real clips"). ``tiny`` is the model trained on the
# synthetic dataset only. Here, not in ``model``, so that naming it does not import torch.
DEFAULT_CHECKPOINT = "tiny-real-scales"
