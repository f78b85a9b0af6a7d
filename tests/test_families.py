"""Every timm ViT family: DINO (v1), DINOv2 (patch 14, registers), DINOv3 (RoPE, storage
tokens) -- files, tokens pooled, channels, tile snapping -- and several backbones compared in
one cross-validation."""
import numpy as np
import pytest
import torch

from conftest import TINY
from soilssl.core.backbone import (create_model, infer_arch, load_backbone, load_compared,
                                   parse_arch, parse_backbone_list, save_backbone, snap_tile)
from soilssl.core.errors import BackboneError
from soilssl.core.features import embed, point_features, prepare
from soilssl.core.progress import Progress
from soilssl.core.raster import TileSource

SMALL = "depth=2,embed_dim=64,num_heads=2"
# family -> (ARCH, patch size, prefix tokens: class + register/storage tokens)
FAMILIES = {
    "dino": (f"vit_small_patch16_224:{SMALL}", 16, 1),
    "dinov2": (f"vit_small_patch14_reg4_dinov2:{SMALL}", 14, 5),
    "dinov3": (f"vit_small_patch16_dinov3:{SMALL}", 16, 5),
}


def family_files(tmp_path, arch, tile=32, seed=0):
    """A random small model of ``arch`` saved as a timm state dict, a DINO training
    checkpoint ('teacher' with 'backbone.' keys) and a safetensors file."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = create_model(arch, 3, tile)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    paths = {"timm": str(tmp_path / "timm.pth"), "dino": str(tmp_path / "dino.pth"),
             "safetensors": str(tmp_path / "model.safetensors")}
    torch.save(sd, paths["timm"])
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()},
                "student": {"module.backbone." + k: v + 1 for k, v in sd.items()},
                "epoch": 3}, paths["dino"])
    save_file(sd, paths["safetensors"])
    return paths, sd


def _messages():
    said = []
    return said, Progress(on_info=said.append)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_files_load_identical_weights_and_features(tmp_path, family):
    arch, patch, prefix = FAMILIES[family]
    paths, sd = family_files(tmp_path, arch)
    x = torch.randn(2, 3, 28 if patch == 14 else 32, 28 if patch == 14 else 32)
    ref = None
    for kind, path in paths.items():
        b = load_backbone(path, arch=arch, tile_size=32)
        assert (b.patch_size, b.prefix_tokens, b.embed_dim) == (patch, prefix, 64), kind
        got = b.model.state_dict()
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), kind
        with torch.no_grad():
            out = b.model.forward_features(x)
        assert out.shape == (2, prefix + (x.shape[-1] // patch) ** 2, 64)
        if ref is not None:
            assert torch.equal(out, ref), kind
        ref = out
    # a SoilSSL checkpoint records the arch with its timm arguments: no ARCH needed
    save_backbone(str(tmp_path / "s.pth"), b.model, b.arch, 3, b.tile_size)
    s = load_backbone(str(tmp_path / "s.pth"))
    assert (s.arch, s.tile_size) == (arch, b.tile_size)
    with torch.no_grad():
        assert torch.equal(s.model.forward_features(x), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_takes_the_class_token_or_the_patch_tokens_only(tmp_path, family):
    arch, patch, prefix = FAMILIES[family]
    torch.manual_seed(1)
    b = load_backbone(None, arch=arch, tile_size=2 * patch)
    x = np.random.default_rng(0).normal(size=(3, 3, 2 * patch, 2 * patch)).astype(np.float32)
    cpu = torch.device("cpu")
    with torch.no_grad():
        tokens = b.model.forward_features(torch.from_numpy(x))
        head = b.model.forward_head(tokens, pre_logits=True)  # timm's own pooled feature
    cls = embed(b, x, cpu, "none", "cls")
    mean = embed(b, x, cpu, "none", "mean")
    np.testing.assert_allclose(cls, tokens[:, 0].numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(cls, head.numpy(), rtol=1e-6, atol=1e-6)  # DINOv3 too: CLS
    np.testing.assert_allclose(mean, tokens[:, prefix:].mean(1).numpy(), rtol=1e-6, atol=1e-6)
    assert tokens.shape[1] == prefix + 4
    if prefix > 1:  # register/storage tokens are not averaged in
        assert not np.allclose(mean, tokens[:, 1:].mean(1).numpy(), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_extra_channels_cloned_from_red_and_other_tile_sizes(tmp_path, family):
    arch, patch, prefix = FAMILIES[family]
    paths, sd = family_files(tmp_path, arch)
    src = sd["patch_embed.proj.weight"]
    b = load_backbone(paths["dino"], arch=arch, in_chans=5, tile_size=64)
    w = b.model.patch_embed.proj.weight.detach()
    assert w.shape[1] == 5 and torch.equal(w[:, :3], src)
    assert torch.equal(w[:, 3], src[:, 0]) and torch.equal(w[:, 4], src[:, 0])
    tile = 70 if patch == 14 else 64  # 64 px snaps to 5 x 14 px for DINOv2
    assert b.tile_size == tile
    with torch.no_grad():
        out = b.model.forward_features(torch.zeros(1, 5, tile, tile))
    assert out.shape == (1, prefix + (tile // patch) ** 2, 64)


def test_tile_size_snaps_to_the_patch_with_a_message(tmp_path, rgb):
    arch = FAMILIES["dinov2"][0]
    said, progress = _messages()
    assert snap_tile(224, 14, progress) == 224 and snap_tile(32, 16, progress) == 32
    assert not said
    assert snap_tile(5, 14) == 14  # never below one patch
    b = load_backbone(None, arch=arch, tile_size=32, progress=progress)
    assert b.tile_size == 28
    assert said == ["TILE_SIZE 32 px is not a multiple of the backbone's patch size (14 px): "
                    "using 28 px tiles."]
    with TileSource(rgb) as src:
        said.clear()
        assert prepare(src, b, 32, progress=progress)[0] == 28  # as built: no second message
        assert [m for m in said if "multiple" in m] == []
        assert prepare(src, b, None, progress=progress)[0] == 28
        feats = point_features(src, b, [70.0, 100.0], [60.0, 50.0], tile=32, device="cpu")
    assert feats.shape == (2, 64) and np.isfinite(feats).all()


def test_infer_arch_of_standard_family_files():
    for name in ("vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2",
                 "vit_small_patch16_dinov3", "vit_base_patch16_dinov3_qkvb", TINY):
        assert infer_arch(create_model(name, 3, 224 if "14" not in name else 56)
                          .state_dict()) == name


def test_arch_arguments_and_errors(tmp_path):
    assert parse_arch(f"vit_small_patch16_dinov3:{SMALL}, drop_path_rate=0.1") == (
        "vit_small_patch16_dinov3", {"depth": 2, "embed_dim": 64, "num_heads": 2,
                                     "drop_path_rate": 0.1})
    assert parse_arch("vit_small_patch16_224") == ("vit_small_patch16_224", {})
    with pytest.raises(BackboneError, match="name:key=value"):
        parse_arch("vit_small_patch16_224:depth")
    with pytest.raises(BackboneError, match="Unknown architecture"):
        load_backbone(None, arch="vit_nonexistent_patch16")
    paths, _ = family_files(tmp_path, FAMILIES["dinov3"][0])
    # a non-standard size cannot be inferred: the message shows what the file holds
    with pytest.raises(BackboneError, match=r"patch 16, embedding dimension 64, 2 blocks, "
                                            r"4 register tokens.*set ARCH"):
        load_backbone(paths["timm"])
    with pytest.raises(BackboneError, match="do not fit"):  # wrong family, same width
        load_backbone(paths["timm"], arch=FAMILIES["dino"][0])


def test_backbone_list_and_compared_names(tmp_path):
    assert parse_backbone_list(" a.pth; ;random:x\nb.safetensors ") == [
        "a.pth", "random:x", "b.safetensors"]
    arch = FAMILIES["dinov3"][0]
    paths, sd = family_files(tmp_path, arch)
    state = torch.get_rng_state()
    got = load_compared(f"{paths['safetensors']};random:{arch};random:{arch}",
                        arch=arch, tile_size=32, taken=("model",))
    assert torch.equal(torch.get_rng_state(), state)  # seeded apart from the global RNG
    assert list(got) == ["model (2)", f"random:{arch}", f"random:{arch} (2)"]
    assert torch.equal(got["model (2)"].model.state_dict()["cls_token"], sd["cls_token"])
    r1, r2 = got[f"random:{arch}"], got[f"random:{arch} (2)"]
    assert r1.checksum is None and r1.source == f"random:{arch}"
    assert not torch.equal(r1.model.cls_token, r2.model.cls_token)  # seeded, distinct
    with pytest.raises(BackboneError, match="random:<timm name>"):
        load_compared("random:")
    with pytest.raises(BackboneError, match="does not exist"):
        load_compared(str(tmp_path / "missing.pth"))


def test_fit_points_compares_several_backbones_on_the_same_folds(tmp_path, tiny_ckpt):
    """BACKBONE (a tiny ViT), a DINOv2 file, a DINOv3 file with all-zero weights (constant
    features: no better than the mean) and random init, in one CV; the ranking follows it."""
    from conftest import write_raster
    from soilssl.core.cv import PIXELS
    from soilssl.core.report import write_report
    from soilssl.core.soil import Points, fit_points
    rng = np.random.default_rng(0)
    h, w = 128, 192
    contrast = np.linspace(5, 120, h)[:, None]
    img = np.clip(128 + rng.normal(0, 1, (3, h, w)) * contrast, 1, 255).astype(np.uint8)
    scene = write_raster(tmp_path / "scene.tif", img, nodata=0)
    (tmp_path / "v2").mkdir()
    (tmp_path / "v3").mkdir()
    v2, _ = family_files(tmp_path / "v2", FAMILIES["dinov2"][0])
    _, sd3 = family_files(tmp_path / "v3", FAMILIES["dinov3"][0])
    torch.save({k: torch.zeros_like(v) for k, v in sd3.items()}, tmp_path / "zeros.pth")
    main = load_backbone(tiny_ckpt, tile_size=32)
    with TileSource(scene) as src:
        cols, rows = rng.uniform(8, 184, 60), rng.uniform(8, 120, 60)
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), np.column_stack([rows / 10]), ["ph"])
        # the DINOv2 file names its arch (@); ARCH serves the zero file, which does not
        compare = load_compared(f"{v2['safetensors']}@{FAMILIES['dinov2'][0]};"
                                f"{tmp_path / 'zeros.pth'};random:{FAMILIES['dinov3'][0]}",
                                arch=FAMILIES["dinov3"][0], in_chans=3, tile_size=32,
                                taken=("features", PIXELS))
        assert compare["model"].tile_size == 28  # DINOv2: its own patch multiple
        said = []
        fit = fit_points(src, pts, main, compare, method="ridge", n_folds=4, seed=0,
                         cache=str(tmp_path / "cache"), progress=Progress(on_info=said.append))
    table = fit.cv.table()
    labels = [r["method"] for r in table]
    assert labels == ["ridge", "ridge [model]", "ridge [zeros]",
                      f"ridge [random:{FAMILIES['dinov3'][0]}]"]
    assert len({r["n"] for r in table}) == 1  # the same points and folds for every backbone
    ranking = fit.ranking
    assert [r["rank"] for r in ranking] == [1, 2, 3, 4]
    assert {r["backbone"] for r in ranking} == {"features", "model", "zeros",
                                                f"random:{FAMILIES['dinov3'][0]}"}
    rmse = {r["method"]: r["rmse_mean"] for r in table}
    assert [r["rmse_mean"] for r in ranking] == sorted(rmse.values())
    assert all(r["rmse_mean"] == rmse[r["method"]] for r in ranking)
    # the zero-weight backbone sees nothing: it ranks below the tiny ViT, which sees texture
    pos = {r["backbone"]: r["rank"] for r in ranking}
    assert pos["features"] < pos["zeros"]
    assert any(m.startswith("Backbones ranked") for m in said)
    assert fit.model["backbone"]["sha256"] == main.checksum  # mapping uses BACKBONE only
    html = open(write_report(str(tmp_path / "r.html"), fit.cv, fit.coords, fit.chosen,
                             ranking=ranking), encoding="utf-8").read()
    assert "Backbones ranked" in html
    names = [r["backbone"] for r in ranking]
    section = html[html.index("Backbones ranked"):]
    assert [section.index(f"<td>{n}</td>") for n in names] == sorted(
        section.index(f"<td>{n}</td>") for n in names)


def test_single_compare_backbone_keeps_its_rows(tmp_path, tiny_ckpt, rgb):
    """The former COMPARE_BACKBONE: one Backbone, rows named '[compare]'."""
    from soilssl.core.soil import Points, fit_points
    main = load_backbone(tiny_ckpt, tile_size=32)
    torch.manual_seed(4)
    other = load_backbone(None, arch=TINY, tile_size=32)
    rng = np.random.default_rng(1)
    with TileSource(rgb) as src:
        cols, rows = rng.uniform(50, 140, 24), rng.uniform(45, 95, 24)
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), cols[:, None] / 10, ["ph"])
        fit = fit_points(src, pts, main, other, method="ridge", n_folds=3,
                         cache=str(tmp_path / "c"))
    assert fit.cv.labels == ["ridge", "ridge [compare]"]
    assert sorted(r["backbone"] for r in fit.ranking) == ["compare", "features"]


def test_meta_dinov2_file_with_registers_loads(tmp_path):
    """Meta's own DINOv2 layout (register_tokens, mask_token, a position embedding that
    includes the class token's) loads to the same features as the timm model."""
    arch = FAMILIES["dinov2"][0]
    torch.manual_seed(2)
    ref = load_backbone(None, arch=arch, tile_size=28)
    sd = ref.model.state_dict()
    pos_cls = torch.randn(1, 1, 64)
    meta = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    meta.update({"register_tokens": sd["reg_token"], "cls_token": sd["cls_token"] - pos_cls,
                 "pos_embed": torch.cat([pos_cls, sd["pos_embed"]], dim=1),
                 "mask_token": torch.zeros(1, 64)})
    torch.save(meta, tmp_path / "dinov2_meta.pth")
    b = load_backbone(str(tmp_path / "dinov2_meta.pth"), arch=arch, tile_size=28)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        # (cls - p) + p is not bit-exact in float32: a mis-mapped key is off by O(1)
        torch.testing.assert_close(b.model.forward_features(x), ref.model.forward_features(x),
                                   atol=1e-3, rtol=1e-3)
    # a standard-size Meta file names itself by its shapes
    full = create_model("vit_small_patch14_reg4_dinov2", 3, 56).state_dict()
    full = {("register_tokens" if k == "reg_token" else k): v for k, v in full.items()}
    assert infer_arch(full) == "vit_small_patch14_reg4_dinov2"


def test_ranking_of_backbones_on_a_class_target_uses_kappa():
    from types import SimpleNamespace

    from soilssl.core.cv import MethodSpec, cross_validate
    from soilssl.core.ranking import format_ranking, rank_backbones
    rng = np.random.default_rng(8)
    n = 60
    good = rng.normal(size=(n, 4))
    y = (good[:, 0] > 0).astype(float) + (good[:, 1] > 0.5)
    sets = {"features": good, "compare": rng.normal(size=(n, 4))}
    folds = np.arange(n) % 3
    cv = cross_validate(sets, np.c_[y, good[:, 2]], folds,
                        [MethodSpec("ridge"), MethodSpec("ridge", "compare")],
                        target_names=["soil", "ph"], kinds=["classification", "regression"])
    bbs = {name: SimpleNamespace(source=name, arch="vit_tiny") for name in sets}
    rows = rank_backbones(cv, bbs)
    soil = [r for r in rows if r["target"] == "soil"]
    assert [r["backbone"] for r in soil] == ["features", "compare"]  # by kappa, higher first
    kappas = np.nanmean(cv.class_fold_metrics[0, :, :, 2], axis=1)
    assert [r["kappa_mean"] for r in soil] == pytest.approx(sorted(kappas, reverse=True))
    assert all(r["metric"] == "kappa" and "rmse_mean" not in r for r in soil)
    ph = [r for r in rows if r["target"] == "ph"]
    assert [r["metric"] for r in ph] == ["rmse", "rmse"] and ph[0]["backbone"] == "features"
    text = format_ranking(rows)
    assert f"soil: 1. features (features, vit_tiny): ridge kappa {soil[0]['kappa_mean']:.3f}" \
        in text
