"""HiFI's global motion compensation (nodes/upsample/alignment.py): the translation estimate, the
sub-pixel shift and the halfway alignment, on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from evpipe.nodes.upsample.alignment import align_to_middle, global_shift, motion_shift, translate


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """scikit-image's camera man, (1, 512, 512) in [0, 1]."""
    from skimage import data

    return torch.from_numpy(data.camera().astype(np.float32) / 255.0)[None]


def test_translate_by_whole_pixels_moves_content_and_repeats_the_border() -> None:
    image = torch.arange(20.0).reshape(1, 4, 5)
    moved = translate(image, 1, -2)
    torch.testing.assert_close(moved[:, 1:, :3], image[:, :3, 2:])  # out(y, x) = image(y - 1, x + 2)
    torch.testing.assert_close(moved[:, 0, :3], image[:, 0, 2:])  # the uncovered row repeats the border
    torch.testing.assert_close(translate(image, 0, 0), image)


def test_translate_by_half_a_pixel_interpolates_linearly() -> None:
    image = torch.tensor([[[0.0, 2.0, 4.0, 8.0]]])
    torch.testing.assert_close(translate(image, 0, 0.5), torch.tensor([[[0.0, 1.0, 3.0, 6.0]]]))


@pytest.mark.parametrize("shift", [(3.0, -5.0), (7.25, 2.5), (-12.5, 9.0), (0.0, 0.0)])
def test_global_shift_recovers_a_known_translation(photo: torch.Tensor, shift: tuple[float, float]) -> None:
    """Two 128² windows of the photo, the second of the photo moved by ``shift``: the estimate is within
    a quarter pixel, with the sign convention frame1(y, x) = frame0(y - dy, x - dx)."""
    window = (slice(None), slice(150, 278), slice(200, 328))
    frame0, frame1 = photo[window], translate(photo, *shift)[window]
    assert np.hypot(*np.subtract(global_shift(frame0, frame1), shift)) < 0.25


def test_global_shift_of_large_frames_is_in_full_resolution_pixels(photo: torch.Tensor) -> None:
    """1024² frames are estimated at 256² (a quarter): the shift still comes back in full-size pixels."""
    big = torch.nn.functional.interpolate(photo[None], scale_factor=2, mode="bilinear")[0]
    assert np.hypot(*np.subtract(global_shift(big, translate(big, 20.0, -36.0)), (20.0, -36.0))) < 1.0


def test_align_to_middle_brings_both_frames_onto_the_middle_frame(photo: torch.Tensor) -> None:
    window = (slice(None), slice(150, 278), slice(200, 328))
    frame0, middle, frame1 = (translate(photo, 3.0 * k, -4.0 * k)[window] for k in (0, 1, 2))
    aligned0, aligned1 = align_to_middle(frame0, frame1)
    inner = (slice(None), slice(10, -10), slice(10, -10))  # away from the repeated border
    blend_error = (0.5 * (frame0 + frame1) - middle)[inner].abs().mean()
    for aligned in (aligned0, aligned1):
        assert (aligned - middle)[inner].abs().mean() < 0.1 * blend_error


def test_global_shift_rejects_frames_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        global_shift(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))


def test_motion_shift_keeps_a_camera_translation(photo: torch.Tensor) -> None:
    frame0 = photo[:, 100:228, 100:228]
    frame1 = translate(photo, 3.0, -5.0)[:, 100:228, 100:228]
    assert motion_shift(frame0, frame1) == global_shift(frame0, frame1)
    assert np.allclose(motion_shift(frame0, frame1), (3.0, -5.0), atol=0.25)


def test_motion_shift_leaves_a_still_background_when_only_an_object_moves(photo: torch.Tensor) -> None:
    """A small high-contrast object moving over a still (smooth) background draws the correlation peak;
    moving the whole frame after it would misplace the background, so no shift is applied."""
    background = F.avg_pool2d(F.avg_pool2d(photo[None], 4), 3, stride=1, padding=1)[0]  # (1, 128, 128)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((yy // 2 + xx // 2) % 2).float()
    frames = []
    for offset in (0, 5, 10):  # frame0, the true middle, frame1
        frame = background.clone()
        frame[0, 50:66, 40 + offset:56 + offset] = checker
        frames.append(frame)
    frame0, middle, frame1 = frames
    assert global_shift(frame0, frame1) == pytest.approx((0.0, 10.0), abs=0.25)  # the object's motion
    assert motion_shift(frame0, frame1) == (0.0, 0.0)

    def error(shift: tuple[float, float]) -> float:
        aligned0, aligned1 = align_to_middle(frame0, frame1, shift)
        return float((((aligned0 + aligned1) / 2 - middle) ** 2).mean())

    assert error(motion_shift(frame0, frame1)) < error(global_shift(frame0, frame1))
