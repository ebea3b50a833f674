"""Device model (graphc/devices.py) and cost model (graphc/costmodel.py)."""

import json

import numpy as np
import pytest

import graphc
from graphc.costmodel import KernelCost, calibrate, calibrate_on, fit_scale, kernel_costs, kernel_time, transfer_time
from graphc.devices import DeviceSet, Link, preset, resolve_devices
from graphc.errors import OptionError
from graphc.options import parse_devices
from tests.helpers import mlp_model


def test_device_lists_and_counts():
    assert resolve_devices("cpu:0,cpu:1").names == ["cpu:0", "cpu:1"]
    assert resolve_devices("cuda:0-7").names == [f"cuda:{i}" for i in range(8)]
    assert resolve_devices(3).names == ["cpu:0", "cpu:1", "cpu:2"]
    cpu = resolve_devices("cpu:0,cpu:1")
    assert cpu[0].kind == "cpu" and cpu[0].cores and cpu.link("cpu:0", "cpu:1").kind == "shm"
    assert cpu[0].peak("fp32") > 1e9 and cpu[0].memory_bytes > 0


def test_presets():
    node = preset("h100x8")
    assert len(node) == 8 and node.hosts == ["node0"] and node.link("cuda:0", "cuda:7").kind == "nvlink"
    assert preset("dgx-h100").to_dict() == {**node.to_dict(), "source": "h100x8"}
    cluster = preset("h100x64")
    assert len(cluster) == 64 and len(cluster.hosts) == 8
    assert cluster.link("cuda:0", "cuda:8").kind == "infiniband"
    assert cluster.link("cuda:8", "cuda:15").kind == "nvlink"
    assert preset("a100").devices[0].peak("fp16") == 312e12
    assert preset("h100").devices[0].peak("bf16") > preset("a100").devices[0].peak("bf16")
    host = preset("host-cpu")
    assert len(host) >= 1 and all(len(d.cores) == 1 for d in host.devices)
    assert parse_devices("h100x8", "reference") == [f"cuda:{i}" for i in range(8)]
    with pytest.raises(OptionError, match="unknown device"):
        preset("tpu-v5")


def test_spec_files_json_and_toml(tmp_path):
    doc = preset("a100x8").to_dict()
    path = tmp_path / "node.json"
    path.write_text(json.dumps(doc))
    assert resolve_devices(str(path)).to_dict() == {**doc, "source": str(path)}
    toml = tmp_path / "two.toml"
    toml.write_text("""
[[devices]]
name = "cpu:0"
peak_flops = { fp32 = 1e11 }
memory_bandwidth = 2e10
memory_bytes = 1e9
cores = [0]
[[devices]]
name = "cpu:1"
peak_flops = 5e10
memory_bandwidth = 2e10
memory_bytes = 2e9
host = "other"
[inter_host_link]
bandwidth = 1e9
latency_s = 1e-4
kind = "ethernet"
""")
    spec = resolve_devices(str(toml))
    assert spec.names == ["cpu:0", "cpu:1"] and not spec.homogeneous
    assert spec.link("cpu:0", "cpu:1").kind == "ethernet"
    assert spec[1].peak("fp32") == 5e10 and spec[1].memory_bytes == 2 * 10 ** 9
    assert parse_devices(str(toml), "reference") == ["cpu:0", "cpu:1"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[devices]]\nname = "cpu:0"\n')
    with pytest.raises(OptionError, match="peak_flops"):
        resolve_devices(str(bad))
    with pytest.raises(OptionError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[[devices")
        resolve_devices(str(tmp_path / "broken.toml"))
    with pytest.raises(OptionError, match="cannot read"):
        resolve_devices(str(tmp_path / "missing.json"))


def test_duplicate_devices_refused():
    d = preset("h100").devices[0]
    with pytest.raises(OptionError, match="twice"):
        DeviceSet([d, d])


def test_roofline_and_transfer():
    dev = preset("h100").devices[0]
    compute_bound = KernelCost("gemm", flops=67e12, bytes=1e6)
    memory_bound = KernelCost("add", flops=1e6, bytes=3.35e12)
    assert kernel_time(compute_bound, dev) == pytest.approx(1.0 + dev.launch_overhead_s)
    assert kernel_time(memory_bound, dev) == pytest.approx(1.0 + dev.launch_overhead_s)
    assert kernel_time(KernelCost("gemm16", 989e12, 0, "fp16"), dev) == pytest.approx(1.0 + dev.launch_overhead_s)
    link = Link(bandwidth=1e9, latency_s=1e-5)
    assert transfer_time(1e9, link) == pytest.approx(1.0 + 1e-5) and transfer_time(0, link) == 0


def test_fit_scale_recovers_synthetic_times():
    rng = np.random.default_rng(0)
    predicted = rng.uniform(1e-5, 1e-2, 40)
    measured = 7.5 * predicted + 3e-5
    scale, overhead = fit_scale(predicted, measured)
    assert scale == pytest.approx(7.5, rel=1e-6) and overhead == pytest.approx(3e-5, rel=1e-4)
    dev = preset("a100").devices[0]
    kernels = [KernelCost(f"k{i}", flops=p * dev.peak(), bytes=0) for i, p in enumerate(predicted)]
    tuned = calibrate(dev, kernels, {k.name: m for k, m in zip(kernels, measured)})
    assert tuned.scale == pytest.approx(7.5, rel=1e-6) and tuned.launch_overhead_s == pytest.approx(3e-5, rel=1e-4)


def test_calibration_on_measured_reference_kernels():
    compiled = graphc.compile(mlp_model(batch=64, features=256, hidden=512, classes=10), target="reference")
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    dev = resolve_devices("cpu:0,cpu:1")[0]
    tuned = calibrate_on(compiled.graph, [x], dev, repeat=2)
    assert tuned.scale > 0 and tuned.launch_overhead_s >= 0
    assert len(kernel_costs(compiled.graph)) == len(compiled.graph.nodes)


def test_compile_options_keep_the_device_spec():
    compiled = graphc.compile(mlp_model(), target="reference", devices="cpu:0,cpu:1", partition_replicas=1)
    spec = compiled.plan.options["device_spec"]
    assert [d["name"] for d in spec["devices"]] == ["cpu:0", "cpu:1"]
    compiled.executable.close()


def test_cli_plan_predicts_for_many_devices(capsys, tmp_path):
    from graphc.cli import main

    model = tmp_path / "mlp.onnx"
    model.write_bytes(mlp_model(batch="N", features=256, hidden=512, classes=10).SerializeToString())
    assert main(["plan", str(model), "--devices", "h100x64", "--batch", "1024"]) == 0
    out = capsys.readouterr().out
    assert "predicted throughput" in out and "cuda:63" in out and "replica" in out
    assert main(["plan", str(model), "--devices", "cpu:0,cpu:1", "--stages", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stages"] == 2 and len(doc["devices"]) == 2
    assert main(["plan", str(model), "--devices", "cpu:0"]) == 2
    assert "two or more" in capsys.readouterr().err
