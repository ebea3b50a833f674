"""Per-kernel calibration of the cost model (graphc/costmodel.py) and measuring it with the llvm profiler
(graphc/calibration.py), and what the partitioner does with it."""

import numpy as np
import pytest

import graphc
from graphc.calibration import measure_calibration
from graphc.costmodel import KernelCost, calibrate, kernel_costs, kernel_time, roofline_time
from graphc.devices import DeviceSet, cpu_device
from graphc.errors import OptionError
from tests.helpers import mlp_model


def _kernels():
    return [KernelCost("conv", 4e9, 1e6), KernelCost("pool", 1e3, 4e7), KernelCost("gemm", 1e9, 4e6)]


def test_each_measured_kernel_gets_its_own_ratio():
    device = cpu_device(0, [0])
    kernels = _kernels()
    measured = {"conv": 0.05, "pool": 0.004, "gemm": 0.02}
    fitted = calibrate(device, kernels, measured)
    for k in kernels:
        assert fitted.kernel_scales[k.name] == pytest.approx(measured[k.name] / roofline_time(k, device))
        # a calibrated kernel is predicted at its measured time (the measurement holds its launch cost)
        assert kernel_time(k, fitted) == pytest.approx(measured[k.name])
    # a slice the tensor-split pass cut from "conv" runs at conv's ratio, over its own (smaller) roofline
    half = KernelCost("conv_s1", 2e9, 5e5)
    assert kernel_time(half, fitted) == pytest.approx(measured["conv"] / 2)
    # a kernel never measured: the fitted scale and overhead
    other = KernelCost("softmax", 1e6, 1e6)
    assert kernel_time(other, fitted) == pytest.approx(fitted.scale * roofline_time(other, fitted)
                                                       + fitted.launch_overhead_s)
    assert calibrate(device, kernels, measured, per_kernel=False).kernel_scales == {}


def test_kernel_scales_survive_a_device_spec_round_trip():
    device = calibrate(cpu_device(0, [0]), _kernels(), {"conv": 0.05, "pool": 0.004, "gemm": 0.02})
    again = DeviceSet.from_dict(DeviceSet([device]).to_dict()).devices[0]
    assert again.kernel_scales == device.kernel_scales


def test_bad_kernel_scales_are_refused():
    with pytest.raises(OptionError, match="kernel_scales"):
        graphc.compile(mlp_model(features=16, hidden=32), target="reference", devices="cpu:0,cpu:1",
                       partition_calibration={"cpu": {"scale": 2.0, "kernel_scales": {"x": -1}}})


def test_measured_calibration_predicts_what_the_profiler_measured():
    model = mlp_model(batch="N", features=256, hidden=512, classes=64)
    cal = measure_calibration(model, "cpu:0,cpu:1", repeat=3)
    assert set(cal) == {"cpu:0", "cpu:1", "not_measured"} and cal["not_measured"] == []
    entry = cal["cpu:0"]
    assert entry["kernels_measured"] > 0 and entry["scale"] > 0
    # the kernels that will be partitioned are the ones measured: each is predicted at its measured time
    single = graphc.compile(model, target="llvm", threads=1)
    device = cpu_device(0, [0])
    from dataclasses import replace

    device = replace(device, scale=entry["scale"], kernel_scales=entry["kernel_scales"])
    costed = [k for k in kernel_costs(single.graph) if roofline_time(k, device) > 0]
    assert costed and all(k.name in entry["kernel_scales"] for k in costed)
    # and the partition made with it runs and agrees with one device
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    compiled = graphc.compile(model, target="llvm", devices="cpu:0,cpu:1", partition_stages=2,
                              partition_replicas=1, partition_calibration="measure")
    try:
        part = compiled.report()["partition"]
        predicted = sum(d["compute_s"] for d in part["devices"])
        assert predicted == pytest.approx(sum(kernel_time(k, device) for k in kernel_costs(single.graph)),
                                          rel=0.5)
        np.testing.assert_allclose(compiled(x), single(x), rtol=1e-5, atol=1e-6)
    finally:
        compiled.executable.close()


def test_measuring_needs_the_llvm_target():
    with pytest.raises(OptionError, match="llvm"):
        measure_calibration(mlp_model(), "cpu:0,cpu:1", target="reference")


def test_cli_plan_with_calibrate_balances_measured_times(capsys, tmp_path):
    import json

    from graphc.cli import main

    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_model(batch="N", features=256, hidden=512, classes=10).SerializeToString())
    assert main(["plan", str(model), "--devices", "cpu:0,cpu:1", "--stages", "2", "--json"]) == 0
    nominal = json.loads(capsys.readouterr().out)
    assert main(["plan", str(model), "--devices", "cpu:0,cpu:1", "--stages", "2", "--calibrate", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    # the report says what the predictions rest on: nominal numbers, or the kernels measured on each device
    assert nominal["calibration"] == {}
    assert set(measured["calibration"]) == {"cpu:0", "cpu:1"}
    assert all(c["kernels_measured"] > 0 for c in measured["calibration"].values())
    assert measured["bottleneck_s"] != nominal["bottleneck_s"]
