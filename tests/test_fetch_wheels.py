"""Resolution for the target host: CUDA runtime wheels arrive through torch's dependencies,
and a CUDA major that does not match the host's is refused before anything is downloaded."""

from __future__ import annotations

import pytest
from rich.console import Console

from appliance.bundle.format import TargetPlatform
from appliance.errors import FetchError
from bundler.fetch.wheels import cuda_majors, resolve_python
from bundler.progress import Reporter

TORCH = "torch==2.13.0"  # PyPI's Linux build of this release depends on CUDA 13 runtime wheels


def _resolve(tmp_path, target: TargetPlatform):
    reporter = Reporter(Console(file=open("/dev/null", "w")), bar=False)  # noqa: SIM115
    return resolve_python([TORCH], None, False, target, tmp_path, reporter)


def test_a_cuda_target_gets_the_runtime_wheels_through_torch(tmp_path):
    locks, _ = _resolve(tmp_path, TargetPlatform(arch="x86_64", cuda="13"))
    text = locks[0].read_text()
    assert "torch==2.13.0" in text and "--hash=sha256:" in text
    assert cuda_majors(locks[0]) == {"13"}
    assert "nvidia-cublas" in text


def test_a_cuda_major_the_host_lacks_is_refused(tmp_path):
    with pytest.raises(FetchError, match=r"python.requirements: resolves to CUDA 13 .* target.cuda is 12"):
        _resolve(tmp_path, TargetPlatform(arch="x86_64", cuda="12"))


def test_cuda_majors_reads_both_naming_schemes(tmp_path):
    lock = tmp_path / "l.lock"
    lock.write_text(
        "nvidia-cuda-runtime-cu12==12.4.127 --hash=sha256:" + "a" * 64 + "\n"
        "nvidia-cuda-runtime==13.0.96 \\\n    --hash=sha256:" + "b" * 64 + "\n"
        "six==1.17.0 --hash=sha256:" + "c" * 64 + "\n"
    )
    assert cuda_majors(lock) == {"12", "13"}
