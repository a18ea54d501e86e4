"""Pure array kernels: Numba on the CPU, Numba-CUDA on the GPU, same signatures and results.

A kernel runs on the GPU when its event arrays are CUDA device arrays (numba device arrays or
anything with ``__cuda_array_interface__``) or when called with ``device="cuda"``; the CUDA code is
imported only then, so CPU users never pay for it.
"""

from evpipe.kernels.edi import edi_integral
from evpipe.kernels.frames import event_frame, time_surface
from evpipe.kernels.simulate import EventSimulator, simulate_events
from evpipe.kernels.voxel import voxel_grid

__all__ = ["EventSimulator", "edi_integral", "event_frame", "simulate_events", "time_surface", "voxel_grid"]
