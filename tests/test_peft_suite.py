"""PEFT's own generic tuner suite (``tests/test_custom_models.py``) run with SVF rows added.

PEFT's test files are not part of this repository: they are taken from the source distribution of the
installed peft version (``pip download --no-binary :all:``), unpacked into a cache folder (never into the
repository), given SVF rows in the same form as PEFT's LoRA/IA3/VeRA rows in their ``TEST_CASES`` and
multi-adapter lists (which then keep the SVF rows only), and run in a subprocess with ``-k SVF``. The test is
skipped only when the sdist cannot be fetched; it fails on any failure and on any skip but PEFT's own skips
for features SVF does not claim (``EXPECTED_SKIPS``).

``bash scripts/peft-suite.sh [pytest args]`` runs the suite by hand and shows pytest's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import peft
import pytest

from peft_svf.paths import default_cache_dir

PEFT_TEST_FILES = ("test_custom_models.py", "testing_common.py", "testing_utils.py")

# Same form as PEFT's rows: (test name, model id of MockTransformerWrapper, config class, config kwargs).
SVF_ROWS = """
    #######
    # SVF # (added by peft-svf's tests/test_peft_suite.py)
    #######
    ("Vanilla MLP 1 SVF", "MLP", SVFConfig, {"target_modules": ["lin0"]}),
    ("Vanilla MLP 2 SVF", "MLP", SVFConfig, {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 3 SVF", "MLP", SVFConfig, {"target_modules": "lin0"}),
    ("Vanilla MLP 4 SVF", "MLP", SVFConfig, {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 5 SVF", "MLP2", SVFConfig, {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 6 SVF", "MLP", SVFConfig, {"target_modules": ["lin0", "lin1"], "parameterization": "scale"}),
    # EmbConv1D's Conv1D is 5 -> 1, rank 1, where the official mask (renormalised to the same singular-value
    # mass) is the identity whatever p: only "scale" can adapt it.
    ("Embedding + transformers Conv1D 1 SVF", "EmbConv1D", SVFConfig,
     {"target_modules": ["conv1d"], "parameterization": "scale"}),
"""
# (test name, tuner method, config class, kwargs of the first adapter, kwargs of the second), on PEFT's MLP.
SVF_MULTI_ROWS = """
    ("SVF Same", "svf", SVFConfig, {"target_modules": ["lin0"], "init_weights": False},
     {"target_modules": ["lin0"], "init_weights": False}),
    ("SVF Different", "svf", SVFConfig, {"target_modules": ["lin0"], "init_weights": False},
     {"target_modules": ["lin1"], "init_weights": False}),
"""
# The lists the rows go into (by name), each closed by the first "]" alone on a line after its opening. Only
# the SVF rows are kept: collecting PEFT's ~20,000 cases of other methods only to deselect them takes ~20 s.
ROW_LISTS = {"TEST_CASES": SVF_ROWS, "MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES": SVF_MULTI_ROWS}

# The suite imports diffusers only for an isinstance check on pipelines, which custom models never are.
CONFTEST = '''"""Written by peft-svf: make SVF a PEFT method; stub diffusers when it is not installed."""
import sys
import types

import peft_svf  # noqa: F401  (registers SVF with PEFT)

try:
    import diffusers  # noqa: F401
except ImportError:
    stub = types.ModuleType("diffusers")
    stub.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
    sys.modules["diffusers"] = stub
'''


def suite_dir(version: str = peft.__version__) -> Path:
    """Cache folder for PEFT's tests of this version (outside the repository: they are PEFT's code)."""
    return default_cache_dir() / "peft-suite" / f"peft-{version}"


class SdistUnavailable(OSError):
    """PEFT's sdist could not be downloaded (no index reachable, version not published as sdist)."""


def fetch_sdist(version: str, directory: Path) -> Path:
    """PEFT's sdist of ``version`` in ``directory``, downloaded with pip (into a temp folder, then moved)."""
    tarball = directory / f"peft-{version}.tar.gz"
    if tarball.exists():
        return tarball
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as download:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
        cmd += ["--disable-pip-version-check", f"peft=={version}", "-d", download]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as err:
            raise SdistUnavailable(f"pip download of peft=={version} timed out") from err
        fetched = Path(download) / tarball.name
        if result.returncode != 0 or not fetched.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SdistUnavailable(f"pip download of peft=={version} failed: {last}")
        os.replace(fetched, tarball)  # a killed download never leaves a partial tarball under the final name
    return tarball


def prepare_suite(version: str = peft.__version__) -> Path:
    """Unpack PEFT's custom-model suite next to its sdist, with SVF rows; returns the folder to run in."""
    root = suite_dir(version)
    tarball = fetch_sdist(version, root)
    tests = root / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for name in PEFT_TEST_FILES:
            member = archive.extractfile(f"peft-{version}/tests/{name}")
            if member is None:
                raise FileNotFoundError(f"{tarball} has no tests/{name}")
            text = member.read().decode()
            if name == "test_custom_models.py":
                text = add_svf_rows(text)
            (tests / name).write_text(text)
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text(CONFTEST)
    # An ini of our own: PEFT's pyproject asks for coverage plugins and turns warnings into errors.
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    return root


def add_svf_rows(source: str) -> str:
    """PEFT's ``test_custom_models.py`` whose case lists hold the SVF rows only."""
    for name, rows in ROW_LISTS.items():
        opening = f"\n{name} = [\n"
        if source.count(opening) != 1:
            raise ValueError(f"PEFT's test_custom_models.py changed: no single {opening.strip()!r}")
        end = source.index("\n]\n", source.index(opening)) + len("\n]\n")
        keep_svf = f"{name} = [row for row in {name} if row[2] is SVFConfig]  # peft-svf: SVF rows only\n"
        source = source[: end - 3] + rows.rstrip("\n") + source[end - 3 : end] + keep_svf + source[end:]
    return source.replace("\nimport pytest\n", "\nimport pytest\nfrom peft_svf import SVFConfig\n", 1)


def run_suite(root: Path, *pytest_args: str, capture: bool = True) -> subprocess.CompletedProcess:
    """Run the SVF cases of PEFT's suite in a subprocess with its own SVD cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {
            **os.environ,
            "PEFT_SVF_CACHE": cache,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        cmd = [sys.executable, "-m", "pytest", "tests/test_custom_models.py", "-q", "-rfEs", "-k", "SVF"]
        return subprocess.run(
            [*cmd, *pytest_args], cwd=root, env=env, capture_output=capture, text=True, timeout=1800
        )


def summary_counts(output: str) -> dict[str, int]:
    """Counts of pytest's final summary line, e.g. ``{"passed": 330, "skipped": 3}``."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    if not lines:
        raise ValueError(f"no pytest summary line in the output:\n{output[-2000:]}")
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


# PEFT's own skips for what SVF does not claim (see docs/svf.md); any other skip fails the test.
EXPECTED_SKIPS = (
    "Testing bias warnings only for LoraConfig or BOFTConfig",
    "Multiple active adapters with modules_to_save/trainable_token_indices is not supported.",
    "<class 'peft_svf.svf.config.SVFConfig'> does not support the 'bias' argument, skipping this test.",
    "This test requires the PEFT method to support training the bias directly",
)


def test_peft_custom_models_suite_passes_with_svf_rows() -> None:
    try:
        fetch_sdist(peft.__version__, suite_dir())
    except SdistUnavailable as err:
        pytest.skip(f"PEFT's test suite needs peft {peft.__version__}'s sdist: {err}")
    result = run_suite(prepare_suite())
    output = result.stdout + result.stderr
    counts = summary_counts(output)
    assert counts.get("failed", 0) == 0 and counts.get("errors", counts.get("error", 0)) == 0, output[-6000:]
    # 9 rows x PEFT's tests: a collection change that silently drops SVF's cases must not pass.
    assert counts["passed"] >= 380, output[-3000:]
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, flags=re.MULTILINE)
    assert sum(map(int, re.findall(r"^SKIPPED \[(\d+)\]", output, flags=re.MULTILINE))) == counts.get(
        "skipped", 0
    )
    assert set(reasons) <= set(EXPECTED_SKIPS), reasons
    assert result.returncode == 0


if __name__ == "__main__":
    sys.exit(run_suite(prepare_suite(), *sys.argv[1:], capture=False).returncode)
