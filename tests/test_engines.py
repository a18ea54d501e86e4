"""Inference engines on the CPU: backend parity, input checking, backend errors, async order and skips.

The net, its ONNX exports and the tolerances: tests/engines_shared.py.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from evpipe.runtime.engines import (  # noqa: E402 - after the torch skip
    BackendUnavailableError,
    EngineInputError,
    EngineRunError,
    ModelSource,
    TensorSpec,
    available_backends,
    open_engine,
)
from evpipe.runtime.engines.onnx_export import export_onnx  # noqa: E402
from evpipe.runtime.engines.trt_backend import engine_cache_key, profile_shapes  # noqa: E402
from tests.engines_shared import FP16_TOL, FP32_TOL, SHAPE, random_voxels, torch_reference  # noqa: E402

# ---- parity -----------------------------------------------------------------------------------


def test_onnx_model_specs_come_from_the_graph(onnx_path: Path) -> None:
    with open_engine(onnx_path, backend="onnxruntime", device="cpu") as engine:
        assert engine.backend == "onnxruntime"
        assert engine.inputs == (TensorSpec("voxel", SHAPE, np.float32),)
        assert engine.outputs == (TensorSpec("image", (1, 1, 32, 32), np.float32),)
        assert "voxel: float32[1, 5, 32, 32]" in repr(engine)


@pytest.mark.parametrize("precision, tolerance", [("fp32", FP32_TOL), ("fp16", FP16_TOL)])
def test_every_available_cpu_backend_matches_the_torch_module(
    net: torch.nn.Module, onnx_path: Path, precision: str, tolerance: float
) -> None:
    available = [name for name, reason in available_backends("cpu", precision).items() if reason is None]
    assert available, "no CPU backend available at all"
    (voxel,) = random_voxels(1)
    expected = torch_reference(net, voxel)
    source = ModelSource(onnx=onnx_path, torch=net)
    for backend in available:
        with open_engine(source, backend=backend, device="cpu", precision=precision) as engine:
            got = engine.run({"voxel": voxel})
        assert set(got) == {"image"}, backend
        assert got["image"].dtype == np.float32, backend
        assert got["image"].shape == expected.shape, backend
        error = float(np.abs(got["image"] - expected).max())
        assert error <= tolerance, f"{backend} {precision}: max abs error {error} > {tolerance}"


def test_torch_backend_and_onnxruntime_agree_on_many_inputs(net: torch.nn.Module, onnx_path: Path) -> None:
    source = ModelSource(onnx=onnx_path, torch=net)
    with (
        open_engine(source, backend="onnxruntime", device="cpu") as ort_engine,
        open_engine(source, backend="torch", device="cpu") as torch_engine,
    ):
        assert torch_engine.inputs == ort_engine.inputs  # read from the ONNX graph
        assert torch_engine.outputs == ort_engine.outputs
        for voxel in random_voxels(5, seed=3):
            a = ort_engine.run({"voxel": voxel})["image"]
            b = torch_engine.run({"voxel": voxel})["image"]
            np.testing.assert_allclose(a, b, rtol=0, atol=FP32_TOL)


def test_fp16_torch_is_close_but_not_bit_identical(net: torch.nn.Module) -> None:
    source = ModelSource(torch=net, inputs=[TensorSpec("voxel", SHAPE, np.float32)], output_names=["image"])
    (voxel,) = random_voxels(1, seed=4)
    with open_engine(source, device="cpu", precision="fp16") as engine:
        assert engine.backend == "torch"  # onnxruntime cannot serve fp16, and there is no ONNX here
        got = engine.run({"voxel": voxel})["image"]
    error = np.abs(got - torch_reference(net, voxel)).max()
    assert 0 < error <= FP16_TOL  # > 0: fp16 really was used inside


def test_torch_fp16_leaves_the_callers_module_in_fp32(net: torch.nn.Module) -> None:
    source = ModelSource(torch=net, inputs=[TensorSpec("voxel", SHAPE, np.float32)])
    open_engine(source, backend="torch", device="cpu", precision="fp16").close()
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_torch_loader_is_called_and_tuple_outputs_get_default_names() -> None:
    class TwoHeads(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, (a * b).sum(dim=1)

    calls = []

    def loader() -> torch.nn.Module:
        calls.append(1)
        return TwoHeads()

    inputs = [TensorSpec("a", (2, 3), np.float32), TensorSpec("b", (2, 3), np.float32)]
    with open_engine(ModelSource(torch=loader, inputs=inputs), device="cpu") as engine:
        assert calls == [1]
        assert [o.name for o in engine.outputs] == ["output0", "output1"]
        assert engine.outputs[1].shape == (2,)
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.full((2, 3), 2, dtype=np.float32)
        got = engine.run({"a": a, "b": b})
    np.testing.assert_array_equal(got["output0"], a + b)
    np.testing.assert_array_equal(got["output1"], (a * b).sum(axis=1))


def test_dynamic_batch_runs_on_onnxruntime_but_torch_needs_fixed_shapes(
    net: torch.nn.Module, dynamic_batch_onnx: Path
) -> None:
    with open_engine(dynamic_batch_onnx, device="cpu") as engine:
        assert engine.inputs[0].shape == (None, 5, 32, 32)
        for batch in (1, 3):
            (voxel,) = random_voxels(1, shape=(batch, 5, 32, 32), seed=batch)
            got = engine.run({"voxel": voxel})["image"]
            np.testing.assert_allclose(got, torch_reference(net, voxel), rtol=0, atol=FP32_TOL)
    with pytest.raises(ValueError, match=r"fixed input shapes.*voxel"):
        open_engine(ModelSource(onnx=dynamic_batch_onnx, torch=net), backend="torch", device="cpu")


# ---- input checking ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_wrong_feeds_are_rejected_naming_the_input(
    net: torch.nn.Module, onnx_path: Path, backend: str
) -> None:
    good = np.zeros(SHAPE, np.float32)
    with open_engine(ModelSource(onnx=onnx_path, torch=net), backend=backend, device="cpu") as engine:
        with pytest.raises(
            EngineInputError, match=r"unknown input\(s\) \['vox'\].*missing input\(s\) \['voxel'\]"
        ):
            engine.run({"vox": good})
        with pytest.raises(EngineInputError, match=r"missing input\(s\) \['voxel'\]"):
            engine.run({})
        with pytest.raises(EngineInputError, match="input 'voxel': dtype float64, expected float32"):
            engine.run({"voxel": good.astype(np.float64)})
        with pytest.raises(
            EngineInputError, match=r"input 'voxel': shape \[1, 5, 32, 31\], expected \[1, 5, 32, 32\]"
        ):
            engine.run({"voxel": good[..., :31]})
        with pytest.raises(EngineInputError, match=r"input 'voxel': shape \[5, 32, 32\]"):
            engine.run({"voxel": good[0]})
        with pytest.raises(EngineInputError, match="input 'voxel': expected a numpy array, got Tensor"):
            engine.run({"voxel": torch.zeros(SHAPE)})
        with pytest.raises(EngineInputError, match="feeds must be a dict"):
            engine.run([good])
        with pytest.raises(EngineInputError, match="input 'voxel'"):
            engine.submit({"voxel": good.astype(np.float16)})  # checked in the caller's thread too
        assert engine.pending == 0


def test_non_contiguous_and_read_only_feeds_are_accepted(net: torch.nn.Module, onnx_path: Path) -> None:
    (voxel,) = random_voxels(1, seed=5)
    strided = np.asfortranarray(voxel)
    read_only = voxel.copy()
    read_only.flags.writeable = False
    for backend in ("onnxruntime", "torch"):
        with open_engine(ModelSource(onnx=onnx_path, torch=net), backend=backend, device="cpu") as engine:
            expected = engine.run({"voxel": voxel})["image"]
            np.testing.assert_array_equal(engine.run({"voxel": strided})["image"], expected)
            np.testing.assert_array_equal(engine.run({"voxel": read_only})["image"], expected)


def test_closed_engine_refuses_work(onnx_path: Path) -> None:
    engine = open_engine(onnx_path, device="cpu")
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.run({"voxel": np.zeros(SHAPE, np.float32)})
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit({"voxel": np.zeros(SHAPE, np.float32)})


# ---- backend selection and errors -------------------------------------------------------------


def test_auto_picks_onnxruntime_on_the_cpu_and_torch_when_only_a_module_is_given(
    net: torch.nn.Module, onnx_path: Path
) -> None:
    with open_engine(onnx_path, device="cpu") as engine:
        assert engine.backend == "onnxruntime"
    with open_engine(ModelSource(onnx=onnx_path, torch=net), device="cpu") as engine:
        assert engine.backend == "onnxruntime"  # ONNX Runtime first on the CPU
    with open_engine(
        ModelSource(torch=net, inputs=[TensorSpec("voxel", SHAPE, np.float32)]), device="cpu"
    ) as engine:
        assert engine.backend == "torch"
    # device="auto" falls back to the CPU when no GPU backend can run the model.
    with open_engine(onnx_path) as engine:
        reasons = available_backends("cuda")
        gpu_can_run = reasons["tensorrt"] is None or reasons["onnxruntime"] is None  # ONNX-only model
        assert engine.device == ("cuda:0" if gpu_can_run and torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(
    "tensorrt" in sys.modules or __import__("importlib").util.find_spec("tensorrt") is not None,
    reason="tensorrt is installed here, so its missing-backend error cannot occur",
)
def test_missing_tensorrt_names_the_extra_to_install(onnx_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"tensorrt.*pip install 'evpipe\[trt\]'"):
        open_engine(onnx_path, backend="tensorrt", device="cuda:0")
    with pytest.raises(BackendUnavailableError, match=r"tensorrt.*CUDA GPU only"):
        open_engine(onnx_path, backend="tensorrt", device="cpu")


def test_missing_onnxruntime_names_the_package(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime"):
        open_engine(onnx_path, backend="onnxruntime", device="cpu")
    assert available_backends("cpu")["onnxruntime"] is not None


def test_gpu_requests_without_gpu_support_name_what_to_install(net: torch.nn.Module, onnx_path: Path) -> None:
    reasons = available_backends("cuda")
    if reasons["onnxruntime"] is not None:
        with pytest.raises(BackendUnavailableError, match="pip install onnxruntime-gpu"):
            open_engine(onnx_path, backend="onnxruntime", device="cuda")
    if reasons["torch"] is not None:
        source = ModelSource(onnx=onnx_path, torch=net)
        with pytest.raises(BackendUnavailableError, match="CUDA build of torch"):
            open_engine(source, backend="torch", device="cuda")
    if all(reason is not None for reason in reasons.values()):
        with pytest.raises(BackendUnavailableError, match="no backend can run this model on cuda:0"):
            open_engine(onnx_path, device="cuda")


def test_no_backend_for_fp16_onnx_on_the_cpu_lists_every_reason(onnx_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        open_engine(onnx_path, device="cpu", precision="fp16")
    message = str(caught.value)
    assert "onnxruntime on cpu: onnxruntime runs ONNX graphs at their exported precision" in message
    assert "torch on cpu: model has no torch module" in message
    with pytest.raises(ValueError, match="precision='fp16' is served by backend 'tensorrt' or 'torch'"):
        open_engine(onnx_path, backend="onnxruntime", device="cpu", precision="fp16")


def test_bad_arguments_are_clear_errors(net: torch.nn.Module, onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        open_engine(onnx_path, backend="tensorflow")
    with pytest.raises(ValueError, match="precision must be one of"):
        open_engine(onnx_path, precision="int8")
    with pytest.raises(ValueError, match="device must be"):
        open_engine(onnx_path, device="gpu0")
    with pytest.raises(ValueError, match="policy must be one of"):
        open_engine(onnx_path, policy="newest")
    with pytest.raises(ValueError, match="max_in_flight must be an int >= 1"):
        open_engine(onnx_path, max_in_flight=0)
    with pytest.raises(ValueError, match=r"onnxruntime= options \['thread'\] are unknown"):
        open_engine(onnx_path, onnxruntime={"thread": 1})
    with pytest.raises(ValueError, match="threads must be >= 1"):
        open_engine(onnx_path, device="cpu", onnxruntime={"threads": 0})
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_engine(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="onnxruntime cannot load"):
        (tmp_path / "garbage.onnx").write_bytes(b"not a model")
        open_engine(tmp_path / "garbage.onnx", device="cpu")
    with pytest.raises(TypeError, match="wrap a torch module as ModelSource"):
        open_engine(net)
    with pytest.raises(ValueError, match="needs at least one of"):
        ModelSource()
    with pytest.raises(ValueError, match="backend 'torch' needs the module's inputs"):
        open_engine(ModelSource(torch=net), backend="torch", device="cpu")
    with pytest.raises(ValueError, match="backend 'onnxruntime' needs an ONNX file"):
        open_engine(ModelSource(torch=net, inputs=[]), backend="onnxruntime", device="cpu")


def test_onnxruntime_threads_option_is_applied(onnx_path: Path) -> None:
    # Options for backends that are not opened are ignored, so one config serves `auto` everywhere.
    with open_engine(
        onnx_path, device="cpu", onnxruntime={"threads": 1}, tensorrt={"workspace_mb": 256}
    ) as engine:
        assert engine.threads == 1


# ---- asynchronous execution -------------------------------------------------------------------


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_async_results_come_in_order_and_equal_sync_results(onnx_path: Path, max_in_flight: int) -> None:
    voxels = random_voxels(24, seed=7)
    with open_engine(onnx_path, device="cpu", max_in_flight=max_in_flight) as engine:
        expected = [engine.run({"voxel": v})["image"] for v in voxels]
        tickets = []
        collected = []
        for voxel in voxels:
            tickets.append(engine.submit({"voxel": voxel}))
            collected += engine.collect()  # non-blocking, interleaved with submits
        collected += engine.collect(block=True, timeout=60)
        assert engine.pending == 0
        assert engine.skipped == 0
    assert tickets == list(range(24))
    assert [c.ticket for c in collected] == tickets
    for done, want in zip(collected, expected, strict=True):
        np.testing.assert_array_equal(done.outputs["image"], want)
        assert done.latency_s > 0


def test_submit_copies_feeds_so_the_caller_may_reuse_its_buffer(onnx_path: Path) -> None:
    voxels = random_voxels(6, seed=8)
    buffer = np.empty(SHAPE, np.float32)
    with open_engine(onnx_path, device="cpu", max_in_flight=2) as engine:
        expected = [engine.run({"voxel": v})["image"] for v in voxels]
        for voxel in voxels:
            buffer[...] = voxel
            engine.submit({"voxel": buffer})
        results = engine.collect(block=True, timeout=60)
    for done, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(done.outputs["image"], want)


def test_latest_policy_skips_stale_requests_and_counts_them(net: torch.nn.Module) -> None:
    # 512x512 makes each request far slower than a submit, so a backlog forms behind the one slot.
    big = (1, 5, 512, 512)
    with __import__("tempfile").TemporaryDirectory() as folder:
        path = export_onnx(net, (torch.zeros(big),), Path(folder) / "big.onnx", ["voxel"], "image")
        voxels = random_voxels(30, shape=big, seed=9)
        with open_engine(path, device="cpu", max_in_flight=1, policy="latest") as engine:
            tickets = [engine.submit({"voxel": v}) for v in voxels]
            results = engine.collect(block=True, timeout=120)
            delivered = [r.ticket for r in results]
            assert delivered == sorted(delivered)  # order kept
            assert len(delivered) + engine.skipped == len(tickets)  # every request accounted for
            assert engine.skipped > 0
            assert delivered[-1] == tickets[-1]  # the newest request is never the one dropped
            for done in results[-2:]:
                np.testing.assert_array_equal(
                    done.outputs["image"], engine.run({"voxel": voxels[done.ticket]})["image"]
                )


class _Gate(torch.nn.Module):
    """Identity that blocks until released: holds the engine's one slot for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started.set()
        assert self.release.wait(30), "gate never released"
        if float(x.flatten()[0]) < 0:
            raise RuntimeError("negative marker")
        return x * 2


def _gated_engine(policy: str, gate: _Gate):
    source = ModelSource(torch=gate, inputs=[TensorSpec("x", (4,), np.float32)], output_names=["y"])
    gate.release.set()  # let the trial forward at open pass
    engine = open_engine(source, device="cpu", max_in_flight=1, policy=policy)
    gate.release.clear()
    gate.started.clear()
    return engine


def test_latest_policy_exact_skip_count_with_a_held_slot() -> None:
    gate = _Gate()
    with _gated_engine("latest", gate) as engine:
        first = engine.submit({"x": np.full(4, 0, np.float32)})
        assert gate.started.wait(10)
        later = [engine.submit({"x": np.full(4, i, np.float32)}) for i in range(1, 6)]  # never block
        assert engine.skipped == 4  # 1..4 replaced by the next one while waiting; 5 waits
        assert engine.pending == 2
        gate.release.set()
        results = engine.collect(block=True, timeout=30)
    assert [r.ticket for r in results] == [first, later[-1]]
    np.testing.assert_array_equal(results[1].outputs["y"], np.full(4, 10, np.float32))
    assert engine.skipped == 4


def test_lossless_policy_blocks_the_submitter_instead_of_dropping() -> None:
    gate = _Gate()
    with _gated_engine("lossless", gate) as engine:
        engine.submit({"x": np.zeros(4, np.float32)})
        assert gate.started.wait(10)
        second_done = threading.Event()

        def submit_second() -> None:
            engine.submit({"x": np.ones(4, np.float32)})
            second_done.set()

        submitter = threading.Thread(target=submit_second)
        submitter.start()
        assert not second_done.wait(0.3)  # blocked: the one slot is busy
        with pytest.raises(TimeoutError, match="still pending"):
            engine.collect(block=True, timeout=0.1)
        gate.release.set()
        submitter.join(10)
        assert second_done.is_set()
        results = engine.collect(block=True, timeout=30)
    assert [r.ticket for r in results] == [0, 1]
    assert engine.skipped == 0


def test_a_failed_request_is_reported_after_the_results_before_it() -> None:
    gate = _Gate()
    gate_engine = _gated_engine("lossless", gate)
    gate.release.set()
    with gate_engine as engine:
        engine.submit({"x": np.ones(4, np.float32)})
        engine.submit({"x": np.full(4, -1, np.float32)})  # the module raises on this one
        engine.submit({"x": np.full(4, 3, np.float32)})
        first = engine.collect(block=True, timeout=30)
        assert [r.ticket for r in first] == [0]
        with pytest.raises(EngineRunError, match="request 1 failed: negative marker"):
            engine.collect()
        assert [r.ticket for r in engine.collect()] == [2]


def test_close_discards_waiting_requests_and_counts_them() -> None:
    gate = _Gate()
    engine = _gated_engine("latest", gate)
    engine.submit({"x": np.zeros(4, np.float32)})
    assert gate.started.wait(10)
    engine.submit({"x": np.ones(4, np.float32)})  # waits behind the held slot
    closer = threading.Thread(target=engine.close)
    closer.start()
    gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert engine.skipped == 1


# ---- TensorRT helpers that need no GPU --------------------------------------------------------


def test_trt_engine_cache_key_tracks_model_gpu_version_and_settings(onnx_path: Path, tmp_path: Path) -> None:
    base = {
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "sm_90",
        "trt_version": "10.13.0.35",
        "precision": "fp16",
        "profiles": {},
        "workspace_mb": 1024,
    }
    key = engine_cache_key(onnx_path, **base)
    assert key == engine_cache_key(onnx_path, **base)  # stable
    for change in (
        {"gpu_name": "NVIDIA A100-SXM4-40GB"},
        {"compute_capability": "sm_80"},
        {"trt_version": "10.14.1.48"},
        {"precision": "fp32"},
        {"profiles": {"voxel": ((1, 5, 32, 32),) * 3}},
        {"workspace_mb": 2048},
    ):
        assert engine_cache_key(onnx_path, **{**base, **change}) != key, change
    # Weights changed, in the file itself or in its external data file: a different key.
    model = onnx.load(str(onnx_path))
    weight = model.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 1
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    edited = tmp_path / "net.onnx"
    onnx.save(model, str(edited))
    assert engine_cache_key(edited, **base) != key
    external = tmp_path / "external" / "net.onnx"
    external.parent.mkdir()
    onnx.save(model, str(external), save_as_external_data=True, location="weights.bin", size_threshold=0)
    external_key = engine_cache_key(external, **base)
    data = bytearray((external.parent / "weights.bin").read_bytes())
    data[0] ^= 0xFF
    (external.parent / "weights.bin").write_bytes(bytes(data))
    assert engine_cache_key(external, **base) != external_key


def test_trt_profile_shapes_normalise_and_reject_bad_ranges() -> None:
    assert profile_shapes({"x": (1, 5, 8, 8)}) == {"x": ((1, 5, 8, 8),) * 3}
    assert profile_shapes({"x": ((1, 5), (2, 5), (4, 5))}) == {"x": ((1, 5), (2, 5), (4, 5))}
    with pytest.raises(ValueError, match=r"input_shapes\['x'\].*min <= opt <= max"):
        profile_shapes({"x": ((4, 5), (2, 5), (1, 5))})
    with pytest.raises(ValueError, match=r"input_shapes\['x'\]"):
        profile_shapes({"x": ("a", "b")})


def test_cached_export_prefers_a_shipped_export_of_the_same_name_only(
    onnx_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A shipped export is used only under the exact name the current weights hash to; any other name (a stale
    export of older weights) is ignored and the graph is exported into the cache once, with one progress line."""
    from evpipe.runtime.engines.onnx_export import cached_export

    monkeypatch.setenv("EVPIPE_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "aaaa-net.onnx").write_bytes(onnx_path.read_bytes())
    exports: list[Path] = []

    def export(path: Path) -> None:
        exports.append(path)
        path.write_bytes(onnx_path.read_bytes())

    assert cached_export("test", "aaaa-net.onnx", export, shipped=shipped) == shipped / "aaaa-net.onnx"
    assert exports == []
    with caplog.at_level("INFO", logger="evpipe"):
        fresh = cached_export("test", "bbbb-net.onnx", export, shipped=shipped)
    assert fresh == tmp_path / "cache" / "test" / "bbbb-net.onnx" and fresh.is_file() and len(exports) == 1
    assert [r.message.split(" (")[0] for r in caplog.records][:1] == ["exporting the test ONNX graph once for this "
                                                                     "machine"]
    assert cached_export("test", "bbbb-net.onnx", export, shipped=shipped) == fresh and len(exports) == 1
