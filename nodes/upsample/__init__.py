"""HiFI offline frame-rate upsampling: one v-parameterised pixel diffusion model, patch-based cascade with
MultiDiffusion merging (``cascade``), the network and checkpoints (``model``), the node, the ``evpipe upsample``
command (``cli``) and the evaluation plugin (``evaluation``)."""
