"""On the real BOINC client: the deployed wrapper finds the KVM probe files deploy shipped.

The bundle carries the appliance's ``probe-vmlinuz`` and ``probe-initrd``
(deploy takes them from beside the image). The client links them into the
slot under those logical names; the wrapper's QEMU driver boots them under
KVM before deciding KVM or TCG, and keeps the verdict in the project dir.
The image itself is junk, so the wrapper stops right after that decision
(exit 206) without booting a VM.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from tests.conftest import ROOT
from vmwrapper.deploy.builder import PROBE_FILES, DeployRequest, deploy
from vmwrapper.deploy.spec import AppVersionId
from vmwrapper.testing.chain import install_bundle, wait_for_report
from vmwrapper.testing.project_server import AUTHENTICATOR, ProjectServer
from vmwrapper.wrapper.driveroptions import PROBE_CACHE

pytestmark = [pytest.mark.boinc_client, pytest.mark.qemu]


def test_the_deployed_wrapper_probes_kvm_with_the_shipped_files(
        standalone_exe, appliance_image, boinc_client, tmp_path):
    image = tmp_path / "in" / "vm_image.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"not a disk image\n" * 64)
    for name in PROBE_FILES:
        shutil.copy(appliance_image.parent / name, image.parent / name)
    (tmp_path / "project").mkdir()
    result = deploy(DeployRequest(
        version=AppVersionId.checked("cernvm", "1.04", "x86_64-pc-linux-gnu"),
        job=ROOT / "job.xml", image=image, executable=standalone_exe,
        project_dir=tmp_path / "project", anonymous_platform=tmp_path / "bundle"))
    assert {f.logical_name for f in result.files} >= set(PROBE_FILES)

    with ProjectServer() as server:
        project_dir = install_bundle(result.bundle_dir, boinc_client, server)
        server.add_workunit("probe", app_name="cernvm", version_num=104,
                            input_files={"in": b"x\n"})
        boinc_client.start(attach=(server.url, AUTHENTICATOR))
        reported = wait_for_report(boinc_client, server, "probe_0", timeout=180)

    stderr = reported.stderr_out
    assert reported.exit_status == 206, stderr
    # the driver's choice, as the wrapper logs it: "hypervisor: qemu 7.2.22 (DETAIL)"
    details = re.findall(r"hypervisor: qemu \S+ \(((?:KVM|TCG).*)\)$", stderr, re.MULTILINE)
    assert len(details) == 1, stderr
    [detail] = details
    assert "no probe kernel" not in detail
    if os.access("/dev/kvm", os.R_OK | os.W_OK):  # the client runs as we do
        # probed: "KVM (probe boot reached user space ...)" or "TCG: KVM probe QEMU exited/hung"
        assert detail.startswith(("KVM (probe boot", "TCG: KVM probe")), detail
        [verdict] = json.loads((project_dir / PROBE_CACHE).read_text()).values()
        assert verdict["detail"] == detail
