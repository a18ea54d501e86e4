"""Any sensor size through the shipped predictor and deblur students: a full DAVIS346 frame (346x260)
and an odd size come back at their own size, and padding is exactly "run on the edge-padded frame,
crop back" (so the part of the output over the sensor is what the network computes there)."""

from __future__ import annotations

import numpy as np
import pytest

from evpipe.nodes.model_engines import pad_to_multiple

DAVIS346 = (260, 346)
ODD = (77, 101)


def test_pad_to_multiple_replicates_frames_and_zero_pads_events():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    padded = pad_to_multiple(frame, 8, "edge")
    assert padded.shape == (8, 8) and padded.dtype == np.float32
    assert np.array_equal(padded[:3, :4], frame)
    assert np.array_equal(padded[7, :4], frame[2]) and np.array_equal(padded[:3, 7], frame[:, 3])
    voxel = np.ones((2, 3, 4), np.float32)
    padded = pad_to_multiple(voxel, 8, "zeros")
    assert padded.shape == (2, 8, 8) and padded[:, 3:].sum() == 0 and padded[:, :, 4:].sum() == 0
    assert pad_to_multiple(np.ones((16, 32), np.float32), 16, "edge").shape == (16, 32)  # already fits
    with pytest.raises(ValueError, match="pad mode must be edge or zeros, got 'reflect'"):
        pad_to_multiple(frame, 8, "reflect")


@pytest.fixture(scope="module")
def predictor():
    from evpipe.nodes.predict.sampler import FramePredictor

    predictor = FramePredictor("4step", "tiny", "onnxruntime", threads=1)
    yield predictor
    predictor.close()


@pytest.fixture(scope="module")
def deblurrer():
    from evpipe.nodes.deblur.sampler import Deblurrer

    deblurrer = Deblurrer("student", "tiny", "onnxruntime", threads=1)
    yield deblurrer
    deblurrer.close()


def _scene(shape: tuple[int, int], bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    frame = (0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.05 * rng.random(shape)).astype(np.float32)
    voxel = np.where(rng.random((bins, *shape)) < 0.05, rng.choice([-1.0, 1.0], (bins, *shape)), 0).astype(np.float32)
    return frame, voxel


@pytest.mark.parametrize("shape", [DAVIS346, ODD])
def test_predictor_any_sensor_size_is_the_padded_run_cropped(predictor, shape):
    anchor, voxel = _scene(shape, predictor.bins)
    prediction = predictor.predict(anchor, voxel)
    assert prediction.shape == shape and prediction.dtype == np.float32 and np.isfinite(prediction).all()
    assert predictor.multiple > 1 and shape[0] % predictor.multiple and shape[1] % predictor.multiple
    # The same network on the frame padded by hand to a shape that already fits (no padding inside).
    fitted = predictor.predict(pad_to_multiple(anchor, predictor.multiple, "edge"),
                               pad_to_multiple(voxel, predictor.multiple, "zeros"))
    assert fitted.shape == tuple(-(-n // predictor.multiple) * predictor.multiple for n in shape)
    np.testing.assert_allclose(prediction, fitted[:shape[0], :shape[1]], atol=1e-6)
    # The frame is not ignored: the prediction follows the anchor.
    assert np.corrcoef(prediction.ravel(), anchor.ravel())[0, 1] > 0.5


@pytest.mark.parametrize("shape", [DAVIS346, ODD])
def test_deblur_any_sensor_size_is_the_padded_run_cropped(deblurrer, shape):
    blurry, voxel = _scene(shape, deblurrer.bins, seed=1)
    edi = np.exp(0.1 * voxel.sum(0)).astype(np.float32)
    sharp = deblurrer.deblur(blurry, edi, voxel)
    assert sharp.shape == shape and sharp.dtype == np.float32 and np.isfinite(sharp).all()
    assert shape[0] % deblurrer.multiple and shape[1] % deblurrer.multiple
    fitted = deblurrer.deblur(pad_to_multiple(blurry, deblurrer.multiple, "edge"),
                              pad_to_multiple(edi, deblurrer.multiple, "edge"),
                              pad_to_multiple(voxel, deblurrer.multiple, "zeros"))
    np.testing.assert_allclose(sharp, fitted[:shape[0], :shape[1]], atol=1e-6)
    assert np.corrcoef(sharp.ravel(), blurry.ravel())[0, 1] > 0.5


@pytest.mark.slow  # exports each coarse graph once per machine (30-60 s each on two busy cores)
@pytest.mark.parametrize("variant", ["4step-coarse2", "4step-coarse4"])
def test_coarse_variants_run_any_sensor_size_and_match_their_onnx_graph(variant):
    from evpipe.nodes.predict.sampler import FramePredictor

    eager = FramePredictor(variant, "tiny", "torch", threads=1)
    factor = int(variant[-1])
    # The frame pads to the latent stride only; the pooled copy pads to the latent path's 16 inside the graph
    # (at 346x260 the pooled copy, 88x68 or 176x132, is not a multiple of 16: that padding is exercised).
    assert eager.model.coarse == factor and eager.multiple == 4 * factor == eager.model.latent_stride
    assert eager.model.noise_shape(64 * factor, 64 * factor) == (4, 16, 16)
    exported = FramePredictor(variant, "tiny", "onnxruntime", threads=1)
    for shape in (DAVIS346, ODD):
        anchor, voxel = _scene(shape, eager.bins)
        prediction = exported.predict(anchor, voxel)
        assert prediction.shape == shape
        np.testing.assert_allclose(prediction, eager.predict(anchor, voxel), atol=1e-4)
    # Not the full-resolution student: the latent path ran on the pooled frame.
    full = FramePredictor("4step", "tiny", "torch", threads=1).predict(anchor, voxel)
    assert np.abs(full - prediction).max() > 1e-4
    exported.close()
