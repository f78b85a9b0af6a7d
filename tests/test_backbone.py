"""Every checkpoint form loads to identical weights; channels, arch and safety checks."""
import os

import pytest
import torch

from conftest import TINY
from soilssl.core.backbone import (infer_arch, load_backbone, resolve_device, save_backbone)
from soilssl.core.errors import BackboneError, DeviceError


def _reference(tile=32):
    ref = load_backbone("random", arch=TINY, tile_size=tile)
    return ref, {k: v.clone() for k, v in ref.model.state_dict().items()}


def _same(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_checkpoint_forms_load_identical_weights(tmp_path):
    torch.manual_seed(3)
    ref, sd = _reference()
    forms = {
        "timm.pth": sd,
        "dino_backbone.pth": dict(sd),  # the official DINO backbone file: same key names
        "dino_train.pth": {
            "teacher": {**{"backbone." + k: v for k, v in sd.items()},
                        "head.mlp.0.weight": torch.zeros(4, 192),
                        "head.last_layer.weight_g": torch.ones(8, 1)},
            "student": {**{"module.backbone." + k: v + 1 for k, v in sd.items()},
                        "module.head.mlp.0.weight": torch.zeros(4, 192)},
            "epoch": 10, "optimizer": {"state": {}, "param_groups": []}},
        "wrapped.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        b = load_backbone(str(tmp_path / name), tile_size=32)
        assert b.arch == TINY, name
        _same(b.model, sd)
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "m.safetensors"))
    _same(load_backbone(str(tmp_path / "m.safetensors"), tile_size=32).model, sd)
    # SoilSSL checkpoint carries arch, channels, tile size and normalisation
    norm = {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]}
    save_backbone(str(tmp_path / "s.pth"), ref.model, TINY, 3, 32, norm)
    b = load_backbone(str(tmp_path / "s.pth"))
    assert (b.arch, b.in_chans, b.tile_size, b.normalization) == (TINY, 3, 32, norm)
    _same(b.model, sd)
    assert len(b.checksum) == 64


def test_extra_channels_are_cloned_from_red(tiny_ckpt):
    src = torch.load(tiny_ckpt, weights_only=True)["patch_embed.proj.weight"]
    b = load_backbone(tiny_ckpt, in_chans=5, tile_size=32)
    w = b.model.patch_embed.proj.weight.detach()
    assert w.shape[1] == 5
    assert torch.equal(w[:, :3], src)
    assert torch.equal(w[:, 3], src[:, 0]) and torch.equal(w[:, 4], src[:, 0])
    y = b.model.forward_features(torch.zeros(1, 5, 32, 32))
    assert y.shape == (1, 5, 192)


def test_other_tile_size_resamples_pos_embed(tiny_ckpt):
    b = load_backbone(tiny_ckpt, tile_size=64)
    assert b.model.pos_embed.shape == (1, 1 + 16, 192)
    b = load_backbone(tiny_ckpt, tile_size=48)
    assert b.model.pos_embed.shape == (1, 1 + 9, 192)


def test_fewer_channels_than_weights_is_an_error(tmp_path, tiny_ckpt):
    b = load_backbone(tiny_ckpt, in_chans=4, tile_size=32)
    save_backbone(str(tmp_path / "rgbd.pth"), b.model, TINY, 4, 32)
    with pytest.raises(BackboneError, match="expect 4 input channels but 3"):
        load_backbone(str(tmp_path / "rgbd.pth"), in_chans=3)


def test_arch_mismatch_says_expected_and_found(tiny_ckpt):
    with pytest.raises(BackboneError, match="expects embedding dimension 384.*192.*vit_tiny"):
        load_backbone(tiny_ckpt, arch="vit_small_patch16_224", tile_size=32)


def test_infer_arch_and_unknown_depth(tiny_ckpt):
    sd = torch.load(tiny_ckpt, weights_only=True)
    assert infer_arch(sd) == TINY
    two_blocks = {k: v for k, v in sd.items() if not k.startswith("blocks.") or
                  k.split(".")[1] in ("0", "1")}
    assert infer_arch(two_blocks) is None
    path = os.path.join(os.path.dirname(tiny_ckpt), "two.pth")
    torch.save(two_blocks, path)
    with pytest.raises(BackboneError, match="set ARCH"):
        load_backbone(path)


def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(BackboneError, match="Refused"):
        load_backbone(str(tmp_path / "evil.pth"), arch=TINY)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("hello")
    with pytest.raises(BackboneError, match="not a PyTorch checkpoint"):
        load_backbone(str(p))
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(BackboneError, match="no ViT weights"):
        load_backbone(str(tmp_path / "empty.pth"))
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.pth"))


def test_timm_name_from_local_cache_only(tmp_path, monkeypatch):
    from timm.models import get_pretrained_cfg
    name = "vit_tiny_patch16_224.augreg_in21k"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BackboneError, match="not in the local model cache"):
        load_backbone(name)
    # lay the file out as huggingface_hub caches it
    repo = get_pretrained_cfg(name).hf_hub_id
    snap = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc")
    (snap / "snapshots" / "abc").mkdir(parents=True)
    torch.manual_seed(5)
    ref = load_backbone("random", arch=TINY)
    from safetensors.torch import save_file
    save_file(ref.model.state_dict(), str(snap / "snapshots" / "abc" / "model.safetensors"))
    b = load_backbone(name)
    assert b.arch == TINY
    _same(b.model, ref.model.state_dict())


def test_devices():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu")
