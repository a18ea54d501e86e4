"""Residual diffusion next-frame predictor (DESSERT, Kong et al.): event-conditioned latent diffusion of
the residual between an anchor frame and the frame to predict, distilled to a few steps.

Pipeline: a KL autoencoder maps gray frames to 4-channel latents at 1/4 resolution; the ER-VAE event
encoder maps the voxel grid of the events between the anchor and target times to z_event, trained to
align with the residual latent z_res = z_target - z_anchor; a U-Net, conditioned on z_event and
z_anchor by channel concatenation, denoises z_res (v-prediction, cosine schedule, DDIM); the
prediction is the anchor plus the decoded residual. Diverse-Length Temporal (DLT) training on gaps of
1..K frames lets the node also roll out several frames ahead. Progressive distillation turns the
64-step teacher into 4-, 2- and 1-step students; the 4-step one (the node's) is then refined on the
frames themselves (a data term on its decoded predictions, ``--stage refine``) and gains a small
full-resolution head trained on its frozen predictions (``--stage head``).

Modules: :mod:`.models` (networks and the composite ``Dessert``), :mod:`evpipe.nodes.diffusion` (the
shared schedule, sampler and losses), :mod:`.presets` (``tiny``, ``base``), :mod:`.checkpoint`
(files, variants, loading), :mod:`.export` (fused ONNX graphs), :mod:`.sampler` (``FramePredictor``:
numpy in/out on torch or ONNX Runtime), :mod:`.node` (the ``predictor`` graph node),
:mod:`.evaluation` (models for ``evpipe.tools.evaluate``).

The shipped ``tiny`` checkpoints (``checkpoints/tiny/``) were made, in this order, by::

    python -m evpipe.tools.make_dataset --preset tiny                  # the synthetic dataset
    python tools/train_predictor.py --preset tiny --stage ae
    python tools/train_predictor.py --preset tiny --stage ervae
    python tools/train_predictor.py --preset tiny --stage diffusion    # also writes unet-short.pt
    python tools/train_predictor.py --preset tiny --stage distill
    python tools/train_predictor.py --preset tiny --stage refine       # rewrites unet-4step.pt
    python tools/train_predictor.py --preset tiny --stage head         # adds the head to unet-4step.pt
    python tools/train_predictor.py --preset tiny --stage ablations

``base`` (256x256, for a GPU) is configuration and code only; it has not been trained here.
"""
