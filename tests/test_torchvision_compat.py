import subprocess
import sys

import pytest


@pytest.mark.subprocess
def test_torchvision_timm_smp_and_lightning_import_after_the_training_package():
    code = (
        "import common_blocks.training, torchvision, timm, segmentation_models_pytorch, lightning;"
        "from common_blocks.torchvision_compat import ensure_torchvision_ops;"
        "import torch; print(ensure_torchvision_ops(), hasattr(torch.ops.torchvision, 'nms'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    fallback, has_nms = result.stdout.split()
    assert has_nms == "True"
    # fallback schemas are declared only where torchvision's own ops failed to load
    own_ops = subprocess.run(
        [sys.executable, "-c", "import torch, torchvision.extension as e; print(e._has_ops())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if own_ops.returncode == 0 and own_ops.stdout.strip() == "True":
        assert fallback == "False"
    else:
        assert fallback == "True"
