"""The deblurrer's models for ``python -m evpipe.tools.evaluate --task deblur --model NAME``.

Names: ``diffevent`` (the distilled student on ONNX Runtime: what the node runs), ``diffevent-torch``
(the same student in torch), ``diffevent-teacher`` (the guided alternating sampler, Algorithm 1 with
the EBRD model y = f(E) x + r), and the degradation-model ablations of the guidance,
``diffevent-teacher-Ex`` (y = E x) and ``diffevent-teacher-fEx`` (y = f(E) x) — the same priors and
step count, only the operator in the guidance changes. ``--checkpoint`` selects a checkpoint
directory (default: the shipped ``tiny``). Every sampler starts from zero noise (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from evpipe.runtime.events import Events


def factory(variant: str, backend: str, degradation: str = "fEx+r") -> Callable[[Any], Callable[..., np.ndarray]]:
    """A model factory (see ``evpipe.tools.evaluate``) for one deblurrer variant."""

    def make(context: Any) -> Callable[..., np.ndarray]:
        from evpipe.nodes.deblur.sampler import Deblurrer

        if context.channels != 1:
            raise ValueError(f"diffevent: the deblurrer is gray-only; the data has {context.channels} channels")
        deblurrer = Deblurrer(variant, context.checkpoint or "tiny", backend, degradation=degradation)
        context.options["fitted"] = {"edi_c": deblurrer.c, **(deblurrer.info["guidance"].to_dict()
                                                              if variant == "teacher" else {})}

        def deblur(blurry: np.ndarray, events: Events, exposure_start: int, exposure_end: int, t_ref: int
                   ) -> np.ndarray:
            return deblurrer.deblur_events(blurry, events, exposure_start, exposure_end, t_ref)

        return deblur

    return make


MODELS = {
    "diffevent": factory("student", "onnxruntime"),
    "diffevent-torch": factory("student", "torch"),
    "diffevent-teacher": factory("teacher", "torch"),
    "diffevent-teacher-fEx": factory("teacher", "torch", "fEx"),
    "diffevent-teacher-Ex": factory("teacher", "torch", "Ex"),
}
