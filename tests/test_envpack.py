"""Tests for tasks.producers.envpack: Python execution environments for Triton's Python backend.

The proof (``test_packed_env_serves_a_package_the_venv_lacks``) builds a conda-free wheel env
for this machine's Python, ships it as ``$$TRITON_MODEL_DIRECTORY/processing_env.tar.gz`` and
has the real local Triton import a package that only the env contains; its control loads the
same model without ``EXECUTION_ENV_PATH`` and sees the ImportError.  The other tests check the
command lines, the activate script and the cache with injected runners (no network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from infra.triton.release import TritonRelease
from tasks.producers import envpack
from tasks.producers.envpack import (
    EnvPackError,
    EnvPackOptions,
    EnvPackTools,
    EnvPackUnavailable,
    activate_script,
    conda_pack_env,
    env_cache_key,
    pack_python_env,
    pip_command,
    pip_platforms,
    wheel_env,
)

PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
#: Present on PyPI as a py3-none-any wheel, absent from the project venv (checked below).
ENV_ONLY_PACKAGE = "tabulate"
ENV_ONLY_REQUIREMENT = "tabulate==0.9.0"
#: The stub imports numpy; the env brings the venv's version so it does not depend on what
#: the base interpreter happens to have.
NUMPY_REQUIREMENT = "numpy==1.26.4"


# --------------------------------------------------------------------------- #
# Fakes
# --------------------------------------------------------------------------- #


class FakePip:
    """Records pip calls and "installs" a tiny package into the --target directory."""

    def __init__(self, package: str = "fakepkg", version: str = "1.2.3") -> None:
        self.calls: list[list[str]] = []
        self.package = package
        self.version = version

    def __call__(self, args: list[str]) -> None:
        self.calls.append(list(args))
        site = Path(args[args.index("--target") + 1])
        (site / self.package).mkdir(parents=True)
        (site / self.package / "__init__.py").write_text(f"VALUE = 'from {self.package}'\n")
        dist = site / f"{self.package}-{self.version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {self.package}\nVersion: {self.version}\n\n")
        (site / "bin").mkdir(exist_ok=True)
        (site / "bin" / f"{self.package}-cli").write_text("#!/build/host/python\n")


class FakeConda:
    """``run`` + ``which`` for the conda route: records commands, builds a fake env/tarball."""

    def __init__(self, have: set[str] = frozenset({"conda", "conda-pack"})) -> None:
        self.have = set(have)
        self.commands: list[list[str]] = []
        self.kwargs: list[dict] = []

    def which(self, name: str) -> str | None:
        return f"/opt/fake/bin/{name}" if name in self.have else None

    def run(self, cmd: list[str], **kwargs):
        self.commands.append(list(cmd))
        self.kwargs.append(kwargs)
        if cmd[1] == "create":
            prefix = Path(cmd[cmd.index("-p") + 1])
            site = prefix / "lib" / "python3.8" / "site-packages"
            (site / "numpy-1.24.4.dist-info").mkdir(parents=True)
            (site / "numpy-1.24.4.dist-info" / "METADATA").write_text("Name: numpy\nVersion: 1.24.4\n\n")
        elif cmd[0].endswith("conda-pack"):
            Path(cmd[cmd.index("-o") + 1]).write_bytes(b"fake conda-pack tarball")
        return SimpleNamespace(returncode=0, stdout="", stderr="")


# --------------------------------------------------------------------------- #
# Unit tests (no network, no conda)
# --------------------------------------------------------------------------- #


def test_pip_platforms_spell_out_manylinux_aliases() -> None:
    tags = pip_platforms("manylinux2014_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"  # best first
    for tag in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
                "manylinux1_x86_64", "manylinux_2_24_x86_64"):
        assert tag in tags
    order = [tags.index(t) for t in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_16_x86_64")]
    assert order == sorted(order)
    assert "manylinux_2_29_x86_64" not in tags
    assert pip_platforms("manylinux_2_35_aarch64")[0] == "manylinux_2_35_aarch64"
    assert "manylinux2014_aarch64" in pip_platforms("manylinux_2_35_aarch64")
    assert pip_platforms("linux_x86_64") == ["linux_x86_64"]


def test_pip_command_targets_the_container_python(tmp_path: Path) -> None:
    site = tmp_path / "lib" / "python3.10" / "site-packages"
    args = pip_command(site, ["transformers", "numpy<2"], "3.10", "manylinux2014_x86_64")
    assert args[0] == "install"
    assert args[args.index("--target") + 1] == str(site)
    assert args[args.index("--python-version") + 1] == "3.10"
    assert args[args.index("--implementation") + 1] == "cp"
    assert "--only-binary=:all:" in args
    assert "--no-compile" in args
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms == pip_platforms("manylinux2014_x86_64")
    assert {"manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"} <= set(platforms)
    assert args[-2:] == ["transformers", "numpy<2"]


def test_wheel_env_layout_and_meta(tmp_path: Path) -> None:
    pip = FakePip()
    path, meta = wheel_env(tmp_path / "out", requirements=["fakepkg==1.2.3"], python_version="3.10",
                           pip=pip, packed=False)
    assert path == tmp_path / "out" / "processing_env" and path.is_dir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["processing_env"]  # no temp left
    (call,) = pip.calls
    assert call[call.index("--target") + 1].endswith("lib/python3.10/site-packages")
    site = path / "lib" / "python3.10" / "site-packages"
    assert (site / "fakepkg" / "__init__.py").is_file()
    assert not (site / "bin").exists()  # build-host console scripts are dropped
    assert meta["removed_scripts"] == ["fakepkg-cli"]
    assert meta["packages"] == {"fakepkg": "1.2.3"}
    assert meta["python_version"] == "3.10" and meta["platform"] == "manylinux2014_x86_64"
    assert meta["method"] == "wheel" and meta["sha256"] is None
    for exe in ("bin/activate", "bin/python3"):
        assert os.access(path / exe, os.X_OK), exe
    assert (path / "pyvenv.cfg").read_text().splitlines() == [
        "home = /usr/bin", "include-system-site-packages = true", "version = 3.10"]
    info = json.loads((path / "mme-env.json").read_text())
    assert info["packages"] == {"fakepkg": "1.2.3"} and info["requirements"] == ["fakepkg==1.2.3"]
    assert not [p for p in path.rglob("*") if p.is_symlink()]


def test_wheel_env_packs_deterministically(tmp_path: Path) -> None:
    p1, m1 = wheel_env(tmp_path / "a", requirements=["fakepkg"], python_version="3.10", pip=FakePip())
    p2, m2 = wheel_env(tmp_path / "b", requirements=["fakepkg"], python_version="3.10", pip=FakePip())
    assert p1.name == "processing_env.tar.gz"
    assert m1["sha256"] == m2["sha256"] and p1.read_bytes() == p2.read_bytes()
    assert m1["bytes"] == p1.stat().st_size
    with tarfile.open(p1) as tar:
        members = {m.name: m for m in tar.getmembers()}
    # members at the archive root, as Triton expects (it extracts into its own temp dir)
    assert {"bin/activate", "bin/python3", "pyvenv.cfg", "mme-env.json",
            "lib/python3.10/site-packages/fakepkg/__init__.py"} <= set(members)
    assert members["bin/activate"].mode == 0o755 and members["bin/python3"].mode == 0o755
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["processing_env.tar.gz"]


def test_wheel_env_failure_leaves_nothing(tmp_path: Path) -> None:
    def broken_pip(args: list[str]) -> None:
        raise EnvPackError("pip failed: no network")

    with pytest.raises(EnvPackError, match="no network"):
        wheel_env(tmp_path, requirements=["x"], pip=broken_pip)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [[], [""], ["--index-url=http://evil"], ["ok", 3]])
def test_bad_requirements_refused(tmp_path: Path, bad: list) -> None:
    with pytest.raises(EnvPackError):
        wheel_env(tmp_path, requirements=bad, pip=FakePip())


def test_activate_script_content() -> None:
    text = activate_script("3.10")
    assert "@PYVER@" not in text
    # location resolved at runtime (Triton extracts to /tmp/python_env_XXXXXX/<n>)
    assert '$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." && pwd -P)' in text
    assert "VIRTUAL_ENV=$_mme_env" in text and "export VIRTUAL_ENV" in text
    assert 'PATH="$_mme_env/bin:$PATH"' in text
    assert 'PYTHONPATH="$_mme_env/lib/python$_mme_py/site-packages${PYTHONPATH:+:$PYTHONPATH}"' in text
    assert "_mme_py=3.10" in text
    assert "include-system-site-packages = true" in text
    assert "unset PYTHONHOME" in text
    repo = str(Path(__file__).resolve().parents[1])
    assert repo not in text and str(Path.home()) not in text  # nothing machine-specific


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_activate_sets_up_env_and_shim_imports_from_it(tmp_path: Path) -> None:
    """Source activate the way Triton does, then run the env's python3 shim."""
    env, _ = wheel_env(tmp_path, requirements=["fakepkg"], python_version=PYVER, pip=FakePip(), packed=False)
    moved = tmp_path / "elsewhere" / "extracted"  # relocatable: works wherever it is unpacked
    moved.parent.mkdir()
    shutil.move(env, moved)
    script = (
        f'source "{moved}/bin/activate" && '
        'echo "VENV=$VIRTUAL_ENV" && echo "PATH0=${PATH%%:*}" && echo "PYTHONPATH=$PYTHONPATH" && '
        'python3 -c "import fakepkg, sys; print(\'IMPORT=\' + fakepkg.VALUE)"'
    )
    env_vars = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env_vars.pop("VIRTUAL_ENV", None)
    out = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True, env=env_vars, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert lines["VENV"] == str(moved.resolve())
    assert lines["PATH0"] == f"{moved.resolve()}/bin"
    assert lines["PYTHONPATH"].startswith(f"{moved.resolve()}/lib/python{PYVER}/site-packages")
    assert lines["IMPORT"] == "from fakepkg"
    cfg = (moved / "pyvenv.cfg").read_text().splitlines()
    base_home = os.path.dirname(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable))
    assert cfg == [f"home = {base_home}", "include-system-site-packages = true", f"version = {PYVER}"]
    assert "WARNING" not in out.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_activate_warns_on_python_version_mismatch(tmp_path: Path) -> None:
    other = "3.10" if PYVER != "3.10" else "3.12"
    env, _ = wheel_env(tmp_path, requirements=["fakepkg"], python_version=other, pip=FakePip(), packed=False)
    env_vars = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", f'source "{env}/bin/activate" && echo ok'],
                         check=False, capture_output=True, text=True, env=env_vars, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok"
    assert f"built for Python {other}" in out.stderr


def test_env_cache_key() -> None:
    k = env_cache_key(["transformers", "numpy"], "3.10", "manylinux2014_x86_64")
    assert k == env_cache_key(["numpy", " transformers "], "3.10", "manylinux2014_x86_64")  # order-free
    assert k.startswith("wheel-py3.10-manylinux2014_x86_64-")
    assert k != env_cache_key(["transformers", "numpy"], "3.12", "manylinux2014_x86_64")
    assert k != env_cache_key(["transformers", "numpy"], "3.10", "manylinux_2_28_x86_64")
    assert k != env_cache_key(["transformers==4.44.2", "numpy"], "3.10", "manylinux2014_x86_64")
    assert k != env_cache_key(["transformers", "numpy"], "3.10", "manylinux2014_x86_64", method="conda")


def test_pack_python_env_builds_once_and_reuses(tmp_path: Path) -> None:
    pip = FakePip()
    cache = tmp_path / "cache"
    options = EnvPackOptions(requirements=["fakepkg==1.2.3"], python_version="3.10", method="wheel",
                             cache_dir=cache)
    tools = EnvPackTools(pip=pip)
    p1, m1 = pack_python_env(tmp_path / "build1", options, tools)
    p2, m2 = pack_python_env(tmp_path / "build2", options, tools)
    assert len(pip.calls) == 1  # the second ensemble reuses the cached env
    assert (m1["cache_hit"], m2["cache_hit"]) == (False, True)
    assert p1 == tmp_path / "build1" / "processing_env.tar.gz"
    assert p1.read_bytes() == p2.read_bytes()
    assert m1["sha256"] == m2["sha256"] == envpack.sha256_file(p2)
    key = env_cache_key(["fakepkg==1.2.3"], "3.10", "manylinux2014_x86_64", method="wheel")
    assert m1["cache_key"] == key
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".lock-")) == [key]
    assert sorted(p.name for p in (cache / key).iterdir()) == ["meta.json", "processing_env.tar.gz"]
    # other requirements: a new env
    pack_python_env(tmp_path / "build3", replace(options, requirements=["fakepkg==1.2.4"]), tools)
    assert len(pip.calls) == 2
    # rebuild=True forces a build; a corrupted cache entry is rebuilt too
    pack_python_env(tmp_path / "build4", replace(options, rebuild=True), tools)
    assert len(pip.calls) == 3
    (cache / key / "processing_env.tar.gz").write_bytes(b"corrupt")
    _, m5 = pack_python_env(tmp_path / "build5", options, tools)
    assert len(pip.calls) == 4 and m5["cache_hit"] is False


def test_pack_python_env_crash_leaves_no_half_env_in_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def crashing_pip(args: list[str]) -> None:
        FakePip()(args)  # half an install, then the build dies
        raise KeyboardInterrupt

    options = EnvPackOptions(requirements=["fakepkg"], python_version="3.10", method="wheel", cache_dir=cache)
    with pytest.raises(KeyboardInterrupt):
        pack_python_env(tmp_path / "out", options, EnvPackTools(pip=crashing_pip))
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".lock-")] == []
    # a leftover of a builder killed with SIGKILL is swept by the next builder of that key
    key = env_cache_key(["fakepkg"], "3.10", "manylinux2014_x86_64", method="wheel")
    (cache / f".tmp-{key}-dead").mkdir()
    pip = FakePip()
    _, meta = pack_python_env(tmp_path / "out", options, EnvPackTools(pip=pip))
    assert len(pip.calls) == 1 and meta["cache_hit"] is False
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".lock-")) == [key]


def test_pack_python_env_defaults_to_mme_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    _, meta = pack_python_env(tmp_path / "out", EnvPackOptions(requirements=["fakepkg"], method="wheel"),
                              EnvPackTools(pip=FakePip()))
    assert Path(meta["cache_entry"]) == (tmp_path / "home").resolve() / "envs" / meta["cache_key"]
    assert (Path(meta["cache_entry"]) / "processing_env.tar.gz").is_file()


def test_auto_picks_wheel_without_conda(tmp_path: Path) -> None:
    fake = FakeConda(have=set())
    _, meta = pack_python_env(tmp_path / "out", EnvPackOptions(requirements=["fakepkg"], method="auto",
                                                               cache_dir=tmp_path / "c"),
                              EnvPackTools(pip=FakePip(), which=fake.which, run=fake.run))
    assert meta["method"] == "wheel" and fake.commands == []


def test_conda_route_command_sequence(tmp_path: Path) -> None:
    fake = FakeConda()
    path, meta = conda_pack_env(tmp_path / "out", requirements=["transformers==4.44.2"], python_version="3.8",
                                run=fake.run, which=fake.which)
    create, pip_install, pack = fake.commands
    assert create[:5] == ["/opt/fake/bin/conda", "create", "-y", "-q", "-p"]
    prefix = create[5]
    assert create[6:] == ["python=3.8", "pip", "numpy"]  # the stub needs numpy inside a conda env
    assert pip_install == ["/opt/fake/bin/conda", "run", "-p", prefix, "python", "-m", "pip", "install",
                           "--no-input", "transformers==4.44.2"]
    assert fake.kwargs[1]["env"]["PYTHONNOUSERSITE"] == "1"
    assert pack[:3] == ["/opt/fake/bin/conda-pack", "-p", prefix]
    assert pack[pack.index("--format") + 1] == "tar.gz"
    assert path == tmp_path / "out" / "processing_env.tar.gz"
    assert path.read_bytes() == b"fake conda-pack tarball"
    assert meta["method"] == "conda-pack" and meta["packages"] == {"numpy": "1.24.4"}
    assert meta["sha256"] == envpack.sha256_file(path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["processing_env.tar.gz"]  # tmp env removed


def test_conda_route_keeps_numpy_pin_from_requirements(tmp_path: Path) -> None:
    fake = FakeConda()
    conda_pack_env(tmp_path, requirements=["numpy==1.24.4", "tokenizers"], python_version="3.10",
                   run=fake.run, which=fake.which)
    assert fake.commands[0][6:] == ["python=3.10", "pip"]


def test_conda_route_failure_is_reported(tmp_path: Path) -> None:
    fake = FakeConda()

    def failing_run(cmd, **kwargs):
        fake.run(cmd, **kwargs)
        if "pip" in cmd:
            return SimpleNamespace(returncode=1, stdout="", stderr="ERROR: No matching distribution found for nope")
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    with pytest.raises(EnvPackError, match="No matching distribution"):
        conda_pack_env(tmp_path, requirements=["nope"], python_version="3.10", run=failing_run, which=fake.which)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing,needle", [({"conda-pack"}, "conda-pack"), ({"conda", "conda-pack"}, "conda")])
def test_conda_missing_raises_unavailable(tmp_path: Path, missing: set, needle: str) -> None:
    fake = FakeConda(have={"conda", "conda-pack"} - missing)
    with pytest.raises(EnvPackUnavailable, match=needle):
        conda_pack_env(tmp_path, requirements=["x"], python_version="3.10", run=fake.run, which=fake.which)
    with pytest.raises(EnvPackUnavailable):
        pack_python_env(tmp_path / "out", EnvPackOptions(requirements=["x"], method="conda",
                                                         cache_dir=tmp_path / "c"),
                        EnvPackTools(run=fake.run, which=fake.which))
    assert fake.commands == []
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".lock-")] == []


def test_unknown_method_refused(tmp_path: Path) -> None:
    with pytest.raises(EnvPackError, match="method"):
        pack_python_env(tmp_path, EnvPackOptions(requirements=["x"], method="docker", cache_dir=tmp_path / "c"))


@pytest.mark.parametrize("release,py", [("21.04", "3.8"), ("23.03", "3.8"), ("23.04", "3.10"),
                                        ("24.09", "3.10"), ("24.11", "3.10"), ("24.12", "3.12"),
                                        ("25.01", "3.12")])
def test_python_of_triton_release(release: str, py: str) -> None:
    assert TritonRelease.parse(release).python_version == py


def test_python_of_triton_release_refuses_unknown() -> None:
    with pytest.raises(ValueError, match="extend"):
        _ = TritonRelease.parse("99.01").python_version
    with pytest.raises(ValueError):
        TritonRelease.parse("latest")


# --------------------------------------------------------------------------- #
# The proof: a packed env in the real local Triton
# --------------------------------------------------------------------------- #

PROBE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X", data_type: TYPE_INT32, dims: [ 3 ] }} ]
output [ {{ name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{parameters}
"""

PROBE_ENV_PARAMETER = """\
parameters: {
  key: "EXECUTION_ENV_PATH",
  value: { string_value: "$$TRITON_MODEL_DIRECTORY/processing_env.tar.gz" }
}
"""

PROBE_MODEL = """\
import json
import sys

import numpy as np
import tabulate
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            info = {
                "table": tabulate.tabulate([[int(v) for v in x]], headers=["a", "b", "c"], tablefmt="github"),
                "tabulate_version": tabulate.__version__,
                "tabulate_file": tabulate.__file__,
                "numpy_file": np.__file__,
                "prefix": sys.prefix,
                "version": "%d.%d" % sys.version_info[:2],
            }
            out = np.array([json.dumps(info).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", out)]))
        return responses
"""


def _write_probe(repo: Path, name: str, env_tarball: Path | None) -> None:
    model = repo / name
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(PROBE_MODEL)
    params = PROBE_ENV_PARAMETER if env_tarball is not None else ""
    (model / "config.pbtxt").write_text(PROBE_CONFIG.format(name=name, parameters=params))
    if env_tarball is not None:
        shutil.copyfile(env_tarball, model / "processing_env.tar.gz")


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    assert importlib.util.find_spec(ENV_ONLY_PACKAGE) is None, (
        f"{ENV_ONLY_PACKAGE} is installed in this venv: the proof needs a package only the env has")
    out = tmp_path_factory.mktemp("probe-env")
    t0 = time.perf_counter()
    try:
        path, meta = wheel_env(out, requirements=[ENV_ONLY_REQUIREMENT, NUMPY_REQUIREMENT], python_version=PYVER,
                               platform="manylinux2014_x86_64")
    except EnvPackError as exc:
        if "index looks unreachable" in str(exc):
            pytest.skip(f"PyPI is not reachable: {str(exc)[:200]}")
        raise
    meta["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return path, meta


@pytest.mark.triton
@pytest.mark.network  # pip fetches tabulate and numpy wheels from PyPI
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only")
def test_packed_env_serves_a_package_the_venv_lacks(tmp_path: Path, probe_env: tuple[Path, dict]) -> None:
    from infra.triton.server import TritonModelError, TritonServer

    tarball, meta = probe_env
    assert meta["packages"][ENV_ONLY_PACKAGE] == "0.9.0" and meta["packages"]["numpy"] == "1.26.4"
    print(f"\nenv: {meta['bytes']} bytes packed, {meta['unpacked_bytes']} unpacked, "
          f"{meta['files']} files, built in {meta['wall_seconds']} s")

    repo = tmp_path / "repo"
    _write_probe(repo, "with_env", tarball)
    _write_probe(repo, "without_env", None)
    with TritonServer(repo, startup_timeout=120) as server:
        t0 = time.perf_counter()
        server.load("with_env")
        load_s = time.perf_counter() - t0
        print(f"load with packed env: {load_s:.2f} s")
        body = {"inputs": [{"name": "X", "shape": [3], "datatype": "INT32", "data": [1, 22, 333]}]}
        resp = httpx.post(f"{server.url}/v2/models/with_env/infer", json=body, timeout=60, trust_env=False)
        assert resp.status_code == 200, resp.text
        info = json.loads(resp.json()["outputs"][0]["data"][0])
        expected = "| a | b | c |"  # github table header, then the row
        assert info["table"].splitlines()[0].replace(" ", "") == expected.replace(" ", "")
        assert info["table"].splitlines()[-1].split() == ["|", "1", "|", "22", "|", "333", "|"]
        assert info["tabulate_version"] == "0.9.0"
        # everything comes from the env Triton extracted from the tarball, not from our venv
        extracted = Path(info["prefix"])
        assert extracted.name.isdigit() and extracted.parent.name.startswith("python_env_"), info
        assert info["tabulate_file"].startswith(info["prefix"] + "/lib/python"), info
        assert info["numpy_file"].startswith(info["prefix"] + "/lib/python"), info
        assert info["version"] == PYVER

        # control: the same model.py without EXECUTION_ENV_PATH cannot import the package
        with pytest.raises(TritonModelError) as err:
            server.load("without_env")
        assert f"No module named '{ENV_ONLY_PACKAGE}'" in str(err.value)
        assert server.is_ready("with_env")
