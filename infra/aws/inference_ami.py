"""What each SageMaker inference AMI (``ProductionVariant.InferenceAmiVersion``) gives a GPU
container, and which Triton releases can run on it.

Why: a Triton container whose CUDA is newer than the instance's NVIDIA driver runs only through
CUDA forward compatibility, i.e. the ``cuda-compat`` libraries the NVIDIA Container Toolkit used
to mount. The AMIs whose names end ``-2-1``, ``-3-1``, ``-4-1`` ship a toolkit "with disabled
CUDA-compat mounting"; the SageMaker Triton images do not set the compat libraries up
themselves, so such a pair passes every API check and the endpoint fails only after ~10 minutes
of provisioning. :func:`check_ami_release` refuses it before any AWS call.

Source: the ``InferenceAmiVersion`` documentation in botocore's SageMaker model (the API
reference's ProductionVariant page says the same): driver and CUDA version of each AMI, and
which ones disable CUDA-compat mounting. Add a row when botocore lists a new GPU AMI.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.errors import InvalidInput
from infra.triton.release import CUDA_BY_RELEASE, TritonRelease


@dataclass(frozen=True)
class InferenceAmi:
    version: str
    nvidia_driver: str
    cuda: str  # the CUDA major.minor the driver supports natively
    cuda_compat_mounted: bool  # False: "NVIDIA Container Toolkit with disabled CUDA-compat mounting"


GPU_AMIS: dict[str, InferenceAmi] = {a.version: a for a in (
    InferenceAmi("al2-ami-sagemaker-inference-gpu-2", "535", "12.2", True),
    InferenceAmi("al2-ami-sagemaker-inference-gpu-2-1", "535", "12.2", False),
    InferenceAmi("al2-ami-sagemaker-inference-gpu-3-1", "550", "12.4", False),
    InferenceAmi("al2023-ami-sagemaker-inference-gpu-4-1", "580", "13.0", False),
)}


def _major_minor(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor or 0)


def check_ami_release(ami_version: str, release: str) -> None:
    """Refuse (one line naming both) an AMI that does not mount CUDA-compat with a Triton release
    whose CUDA is newer than the AMI's driver supports, or whose CUDA is not known here. An AMI
    not in :data:`GPU_AMIS` (a Neuron one, or one newer than this table) is not judged."""
    ami = GPU_AMIS.get(ami_version)
    if ami is None or ami.cuda_compat_mounted:
        return
    cuda = TritonRelease.parse(release).cuda_version
    where = (f"--inference-ami {ami_version} (NVIDIA driver {ami.nvidia_driver}, CUDA {ami.cuda}, "
             f"CUDA-compat libraries not mounted)")
    if cuda is None:
        raise InvalidInput(f"{where} with --triton-release {release}: the CUDA version of Triton "
                           f"{release} is not known here (infra/triton/release.py CUDA_BY_RELEASE; "
                           f"known: {', '.join(sorted(CUDA_BY_RELEASE))}), so whether it runs on "
                           f"that driver cannot be told; add it, or use "
                           f"--inference-ami al2-ami-sagemaker-inference-gpu-2")
    if _major_minor(cuda) > _major_minor(ami.cuda):
        raise InvalidInput(f"{where} cannot run --triton-release {release} (CUDA {cuda}): the "
                           f"container would need CUDA forward compatibility, which that AMI does "
                           f"not mount; use an AMI whose CUDA is {cuda} or newer, "
                           f"al2-ami-sagemaker-inference-gpu-2 (compat mounted), or an older release")
