"""Event-guided diffusion deblurring (DiffEvent, Wang et al., ICASSP 2024): a blurry frame and the
events of its exposure give the sharp frame at the exposure midpoint.

Model: the EBRD degradation y = f(E)·x + r (E the EDI double integral of the exposure's events,
f a learned enhancement of E, r a residual image); pixel-space diffusion priors of x and r conditioned
on y and f(E); the paper's alternating sampler (Algorithm 1) with analytic pseudo-inverse guidance
gradients of s‖y − f(E)x̂_0 − r̂_0‖² + λ·TV(x̂_0) and s'‖y − f(E)x̂*_0 − r̂_0‖² + λ'‖r̂_0‖₁; the guided
sampler distilled into a few-step student that the node runs (ONNX Runtime by default).

Modules: :mod:`.guidance` (EBRD forward model, objectives and their closed-form gradients),
:mod:`.models` (f(E), priors, guided sampler, fused student), :mod:`evpipe.nodes.diffusion` (the shared
schedule, DDIM step/sampler and losses), :mod:`.presets` (``tiny``, ``base``; the guidance weights and
why), :mod:`.checkpoint`, :mod:`.export` (ONNX), :mod:`.sampler` (``Deblurrer``: numpy in/out, E of an
exposure), :mod:`.node` (the ``deblur`` graph node), :mod:`.evaluation` (models for
``evpipe.tools.evaluate --task deblur``).

The shipped ``tiny`` checkpoint (``checkpoints/tiny/``) was made by::

    python -m evpipe.tools.make_dataset --preset tiny                          # the synthetic dataset
    python -m evpipe.tools.train_deblur --preset tiny --stage enhance          # } run as --stage all
    python -m evpipe.tools.train_deblur --preset tiny --stage priors           # } (500 prior iterations)
    python -m evpipe.tools.train_deblur --preset tiny --stage priors --iters 400   # continues the priors
    python -m evpipe.tools.train_deblur --preset tiny --stage tune
    python -m evpipe.tools.train_deblur --preset tiny --stage distill

(the first run's record is in git history, commit 6630ded; ``checkpoints/tiny/train_log.json`` holds
each stage's latest command, losses and wall time). ``base`` is configuration only; it has not been
trained here.
"""
