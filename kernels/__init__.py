"""Pure array kernels: Numba on the CPU, Numba-CUDA on the GPU, same signatures and results."""
