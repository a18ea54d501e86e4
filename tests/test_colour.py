"""Colour through the gray video models: upsample and restore (nodes and CLIs) keep a colour clip's hue, and
a gray clip stays gray."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest

from evpipe.nodes.colour import colour_image, gray_unit, is_gray, rgb_to_ycbcr, ycbcr_to_rgb
from evpipe.nodes.restore.psf import degrade_clip, temporal_psf

RED, BLUE = (0.8, 0.2, 0.2), (0.2, 0.3, 0.8)  # unsaturated: a luma error cannot clip them into another hue
SIZE, SQUARE, STEP = 32, 12, 2  # frame side, square side, motion per frame (pixels)
HUE_TOLERANCE_DEG = 10.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _square_clip(frames: int) -> np.ndarray:
    """A red square moving right by STEP px a frame on a blue background: float32 (frames, SIZE, SIZE, 3)."""
    clip = np.empty((frames, SIZE, SIZE, 3), np.float32)
    clip[:] = BLUE
    top = (SIZE - SQUARE) // 2
    for t in range(frames):
        left = 4 + STEP * t
        clip[t, top:top + SQUARE, left:left + SQUARE] = RED
    return clip


def _hue(rgb: np.ndarray) -> float:
    """Hue in degrees of the mean colour of a patch (..., 3) in [0, 1] (or uint8)."""
    mean = np.asarray(rgb, np.float64).reshape(-1, 3).mean(axis=0)
    return 360.0 * colorsys.rgb_to_hsv(*(mean / (255.0 if mean.max() > 1.5 else 1.0)))[0]


def _hue_error(rgb: np.ndarray, colour: tuple[float, float, float]) -> float:
    difference = abs(_hue(rgb) - _hue(np.array(colour))) % 360.0
    return min(difference, 360.0 - difference)


def _assert_hues_kept(frame: np.ndarray, square_left: float) -> None:
    """The background corner stays blue, the square's centre red (hue within HUE_TOLERANCE_DEG)."""
    assert frame.ndim == 3 and frame.shape[2] == 3, f"expected colour out, got shape {frame.shape}"
    centre_y, centre_x = SIZE // 2, round(square_left + SQUARE / 2)
    assert _hue_error(frame[:4, :4], BLUE) < HUE_TOLERANCE_DEG
    assert _hue_error(frame[-4:, -4:], BLUE) < HUE_TOLERANCE_DEG
    assert _hue_error(frame[centre_y - 2:centre_y + 2, centre_x - 2:centre_x + 2], RED) < HUE_TOLERANCE_DEG


def test_ycbcr_round_trip_and_gray() -> None:
    rgb = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    ycbcr = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(ycbcr[..., 0], gray_unit(rgb), atol=1e-6)  # the luma the networks were trained on
    neutral = rgb_to_ycbcr(colour_image(rgb[..., 0]))
    np.testing.assert_allclose(neutral[..., 1:], 0.5, atol=1e-6)
    assert is_gray(colour_image(rgb[..., 0])) and is_gray(rgb[..., 0]) and not is_gray(rgb)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        rgb_to_ycbcr(rgb[..., :2])


def _upsample_node(params: dict) -> tuple:
    from evpipe.nodes.upsample.node import Upsample
    from evpipe.runtime.events import Frame
    from evpipe.runtime.wire import Message

    node = Upsample("upsample", {"factor": 2, "levels": 1, "steps": 1, "samples": 1, **params})
    sent: list[Message] = []
    node.attach_emitter(lambda port, msg: sent.append(msg))
    node.start()
    return node, sent, Frame, Message


def test_upsample_node_keeps_colour_and_gray() -> None:
    clip = _square_clip(2)
    node, sent, frame_type, message = _upsample_node({})
    for t, image in enumerate(clip):
        node.process("frames", message.from_frame(frame_type((image * 255).round().astype(np.uint8), 1000 * t, 0)))
    frames = [m.frame().image for m in sent]
    assert len(frames) == 3 and all(f.shape == (SIZE, SIZE, 3) for f in frames)
    np.testing.assert_allclose(frames[0], clip[0], atol=1 / 255 + 1e-6)  # an input frame passes as it was
    _assert_hues_kept(frames[1], 4 + STEP / 2)

    node, sent, frame_type, message = _upsample_node({})
    for t, image in enumerate(clip):
        gray = colour_image(gray_unit(image))  # a gray clip decoded as RGB: equal channels
        node.process("frames", message.from_frame(frame_type(gray, 1000 * t, 0)))
    assert [m.frame().image.shape for m in sent] == [(SIZE, SIZE)] * 3


def test_upsample_cli_keeps_colour_and_gray(tmp_path: Path) -> None:
    from PIL import Image

    from evpipe.runtime.cli import main

    clip = (_square_clip(3) * 255).round().astype(np.uint8)
    gray = [np.round(gray_unit(image) * 255).astype(np.uint8) for image in clip]
    for name, frames in (("colour", clip), ("gray", gray)):
        source = tmp_path / name
        source.mkdir()
        for i, image in enumerate(frames):
            Image.fromarray(image).save(source / f"{i:02d}.png")
        out = tmp_path / f"{name}_out"
        assert main(["upsample", str(source), str(out), "--levels", "1", "--steps", "1", "--samples", "1"]) == 0
        written = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))]
        assert len(written) == 5
        if name == "colour":
            assert np.abs(written[0].astype(int) - clip[0]).max() <= 1
            _assert_hues_kept(written[1], 4 + STEP / 2)
            _assert_hues_kept(written[3], 4 + 3 * STEP / 2)
        else:
            assert all(is_gray(frame) for frame in written)


def _measured(clip: np.ndarray, degradation: str) -> np.ndarray:
    """The clip through a temporal PSF, rounded to 8 bits: uint8 (L, H, W[, 3])."""
    return np.round(np.clip(degrade_clip(clip, temporal_psf(degradation)), 0, 1) * 255).astype(np.uint8)


def _restore_node(frames: np.ndarray, **params: object) -> list[np.ndarray]:
    from evpipe.nodes.restore.node import Restore
    from evpipe.runtime.events import Frame
    from evpipe.runtime.wire import Message

    node = Restore("restore", {"progress": False, "device": "cpu", "window": 8, "overlap": 2, **params})
    out: list = []
    node.attach_emitter(lambda port, msg: out.append(msg.frame().image))
    node.start()
    for i, image in enumerate(frames):
        node.process("frames", Message.from_frame(Frame(image, 1000 * i, 0)))
    node.stop()
    return out


@pytest.mark.parametrize("degradation", ["uniform7", "gaussian1"])  # CG-solved and measured chroma
def test_restore_node_keeps_colour_and_gray(degradation: str) -> None:
    # One window holding the whole clip: the node's measurement model (circular boundary) is the clip's.
    clip = _square_clip(8)
    restored = _restore_node(_measured(clip, degradation), degradation=degradation, window=8)
    assert len(restored) == 8 and all(f.shape == (SIZE, SIZE, 3) for f in restored)
    for t in (2, 4, 5):  # inner frames: at the ends the circular PSF mixes in the clip's other end
        _assert_hues_kept(restored[t], 4 + STEP * t)
    if degradation == "uniform7":  # the CG-solved chroma is restored, not only kept
        sharp, blurred = rgb_to_ycbcr(clip)[..., 1:], rgb_to_ycbcr(_measured(clip, degradation) / 255.0)[..., 1:]
        ours = rgb_to_ycbcr(np.stack(restored))[..., 1:]
        assert np.mean((ours - sharp) ** 2) < 0.5 * np.mean((blurred - sharp) ** 2)
    # Several windows, cross-faded: colour stays colour; a gray clip stays gray.
    longer = _measured(_square_clip(10), degradation)
    assert [f.shape for f in _restore_node(longer, degradation=degradation, nfe=2)] == [(SIZE, SIZE, 3)] * 10
    gray = [np.round(gray_unit(image) * 255).astype(np.uint8) for image in longer]
    assert [f.shape for f in _restore_node(gray, degradation=degradation, nfe=2)] == [(SIZE, SIZE)] * 10


def test_restore_colour_window_rejects_a_measured_chroma_with_a_spatial_degradation() -> None:
    from evpipe.nodes.restore.model import load_prior
    from evpipe.nodes.restore.sampler import DDSConfig
    from evpipe.nodes.restore.windows import restore_colour_window

    model, _ = load_prior("tiny", "cpu")
    with pytest.raises(ValueError, match="spatial 'sr4'"):
        restore_colour_window(model, temporal_psf("gaussian1"), _square_clip(4), DDSConfig(nfe=1), spatial="sr4",
                              boundary="circular", device="cpu", chroma="degraded")


def test_restore_cli_keeps_colour(tmp_path: Path) -> None:
    # `evpipe restore` runs the shipped graph (clip reader -> restore -> video) as separate processes.
    import av

    from evpipe.runtime.cli import main
    from tests.data_fixtures.recordings import write_video

    clip = _square_clip(8)
    source = write_video(tmp_path / "blurred.mp4", _measured(clip, "uniform7"), rate=25)
    out = tmp_path / "restored.mp4"
    assert main(["restore", str(source), str(out), "--degradation", "uniform7", "--nfe", "2", "--window", "8",
                 "--overlap", "2"]) == 0
    with av.open(str(out)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 8
    for t in (2, 5):
        _assert_hues_kept(frames[t], 4 + STEP * t)
