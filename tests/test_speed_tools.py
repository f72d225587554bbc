"""The speed tools' plumbing (no timing): output parsing, the missing-reference error, profiling."""
import importlib.util
import os
import subprocess
import sys

from conftest import REPO, run_script


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ms_per_image_reads_every_timing_format():
    bench = _module("benchmark_vs_reference")
    assert bench.ms_per_image("d0 512x512 batch 1: median 118.3 ms/img (min 1)", 1) == 118.3
    assert bench.ms_per_image("d0 512x512 batch 4: median 2.800 s/step, 1.4 img/s", 4) == 700.0
    assert bench.ms_per_image("median ms/img: 171.9", 1) == 171.9


def test_each_run_reports_the_hypervisor_steal_share():
    bench = _module("benchmark_vs_reference")
    output, steal = bench.run([sys.executable, "-c", "print('d0: median 5.0 ms/img')"])
    assert "median 5.0 ms/img" in output
    if os.path.exists("/proc/stat"):
        steal_ticks, total_ticks = bench.cpu_ticks()
        assert 0 <= steal_ticks <= total_ticks and (steal is None or 0.0 <= steal <= 1.0)
    assert bench.timing((output, 0.25), 1) == (5.0, "5.0 ms/img (steal 25%)")
    assert bench.timing((output, None), 1) == (5.0, "5.0 ms/img")


def test_missing_reference_python_is_one_line(tmp_path):
    res = run_script(["scripts/benchmark_vs_reference.py", "--ref-python", str(tmp_path / "nope" / "python")])
    assert res.returncode != 0 and "setup_reference_env.sh" in res.stderr and "Traceback" not in res.stderr


def test_profile_forward_lists_operators():
    res = run_script(["scripts/profile_forward.py", "--config", "config/quickstart.py", "--iters", "1",
                      "--warmup", "1", "--set", "DatasetParam.image_size=(64, 64)", "--set", "NeckParam.repeats=1",
                      "--set", "HeadParam.repeats=1"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "_sg_mkldnn_conv" in res.stdout and "total operator time" in res.stdout


def test_cpu_devices_share_the_cores():
    """OpenMP threads per CPU device: the cores split among KvstoreParam.cpu_devices, unless set."""
    code = ("import sys; from utils.cpu import configure_cpu, cpu_devices_of, physical_cores; "
            "configure_cpu(devices=cpu_devices_of(sys.argv[1:])); import os; "
            "print(os.environ['OMP_NUM_THREADS'], physical_cores())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = REPO

    def threads(args, **extra):
        out = subprocess.run([sys.executable, "-c", code] + args, cwd=REPO, env=dict(env, **extra),
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]), int(out[1])

    got, cores = threads(["--config", "config/quickstart.py"])                 # 2 CPU devices
    assert got == max(1, cores // 2)
    got, cores = threads(["--config", "config/quickstart.py", "--set", "KvstoreParam.cpu_devices=0"])
    assert got == cores
    assert threads(["--config", "config/nope.py"])[0] == cores                 # reported later by the script
    assert threads(["--config", "config/quickstart.py"], OMP_NUM_THREADS="3")[0] == 3


def configured(variable, inference, **preset):
    """The value configure_cpu(inference=...) leaves in `variable`, in a fresh interpreter whose
    environment has `preset` and otherwise lacks `variable`."""
    code = ("import sys, os; from utils.cpu import configure_cpu; configure_cpu(inference=sys.argv[2] == 'yes'); "
            "print(os.environ.get(sys.argv[1], 'unset'))")
    env = {k: v for k, v in os.environ.items() if k != variable}
    env.update(preset, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code, variable, "yes" if inference else "no"], cwd=REPO,
                          env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_inference_caps_onednn_isa_unless_set():
    """configure_cpu(inference=True) caps oneDNN at AVX2 (docs/speed.md); training and a user's own
    DNNL_MAX_CPU_ISA are left alone."""
    assert configured("DNNL_MAX_CPU_ISA", inference=True) == "AVX2"
    assert configured("DNNL_MAX_CPU_ISA", inference=False) == "unset"
    assert configured("DNNL_MAX_CPU_ISA", inference=True, DNNL_MAX_CPU_ISA="ALL") == "ALL"


def test_operator_tuning_off_unless_set():
    """configure_cpu turns MXNet's operator tuning off for training and inference (its per-op OpenMP
    decision made elemwise_mul ~3x slower, docs/speed.md); a user's own setting is left alone."""
    assert configured("MXNET_USE_OPERATOR_TUNING", inference=True) == "0"
    assert configured("MXNET_USE_OPERATOR_TUNING", inference=False) == "0"
    assert configured("MXNET_USE_OPERATOR_TUNING", inference=False, MXNET_USE_OPERATOR_TUNING="1") == "1"
