"""DINO components against hand-computed values on tiny tensors."""
import math

import numpy as np
import pytest
import torch

from soilssl.core.dino import (DINOHead, DINOLoss, MultiCropAugmentation, MultiCropWrapper,
                               cancel_last_layer_grads, clip_gradients, cosine_schedule,
                               default_local_size, ema_update, param_groups, teacher_temperature)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _reference_loss(student, teacher, center, ncrops, t_temp, s_temp=0.1):
    """DINO's loss written out with numpy loops."""
    b = teacher.shape[0] // 2
    q = np.exp(_np_log_softmax((teacher - center) / t_temp))
    total, terms = 0.0, 0
    for iq in range(2):
        for v in range(ncrops):
            if v == iq:
                continue
            ls = _np_log_softmax(student[v * b:(v + 1) * b] / s_temp)
            total += np.mean(np.sum(-q[iq * b:(iq + 1) * b] * ls, axis=-1))
            terms += 1
    return total / terms


def test_dino_loss_closed_form_uniform():
    # teacher outputs equal the centre -> uniform q; equal student logits -> ln K per term
    loss_fn = DINOLoss(out_dim=4, ncrops=3)
    student = torch.zeros(3 * 2, 4)
    teacher = torch.zeros(2 * 2, 4)
    loss = loss_fn(student, teacher, epoch=0)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)
    # student logit s on class 0 of a K=2 head against a uniform teacher
    loss_fn = DINOLoss(out_dim=2, ncrops=2)
    s = 0.05
    student = torch.tensor([[s, 0.0], [s, 0.0]])
    loss = loss_fn(student, torch.zeros(2, 2), epoch=0)
    p0 = 1 / (1 + math.exp(-s / 0.1))
    assert loss.item() == pytest.approx(-0.5 * math.log(p0) - 0.5 * math.log(1 - p0), abs=1e-6)


def test_dino_loss_and_centering_match_reference():
    rng = np.random.default_rng(0)
    ncrops, b, k = 4, 3, 5
    loss_fn = DINOLoss(out_dim=k, ncrops=ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07,
                       warmup_teacher_temp_epochs=4, center_momentum=0.9)
    center = np.zeros((1, k))
    for epoch in (0, 2):
        student = rng.normal(size=(ncrops * b, k))
        teacher = rng.normal(size=(2 * b, k))
        temp = 0.04 + (0.07 - 0.04) * epoch / 3
        want = _reference_loss(student, teacher, center, ncrops, temp)
        got = loss_fn(torch.tensor(student, dtype=torch.float32),
                      torch.tensor(teacher, dtype=torch.float32), epoch)
        assert got.item() == pytest.approx(want, rel=1e-5)
        # the centre used above is the old one; then c <- 0.9 c + 0.1 mean(teacher)
        center = 0.9 * center + 0.1 * teacher.mean(axis=0, keepdims=True)
        np.testing.assert_allclose(loss_fn.center.numpy(), center, rtol=1e-5, atol=1e-7)


def test_teacher_temperature_schedule():
    assert teacher_temperature(0, 0.04, 0.07, 4) == pytest.approx(0.04)
    assert teacher_temperature(1, 0.04, 0.07, 4) == pytest.approx(0.05)
    assert teacher_temperature(3, 0.04, 0.07, 4) == pytest.approx(0.07)
    assert teacher_temperature(9, 0.04, 0.07, 4) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)


def test_cosine_schedule_values():
    s = cosine_schedule(1.0, 0.0, epochs=2, niter_per_ep=2, warmup_epochs=1)
    np.testing.assert_allclose(s, [0.0, 1.0, 1.0, 0.5])
    s = cosine_schedule(0.996, 1.0, epochs=1, niter_per_ep=3)
    np.testing.assert_allclose(s, [0.996, 0.996 + 0.004 * 0.25, 0.996 + 0.004 * 0.75])
    # a warm-up longer than the run is capped: a pure linear ramp
    np.testing.assert_allclose(cosine_schedule(2.0, 0.0, 1, 3, warmup_epochs=5), [0, 1, 2])


def test_ema_update_hand_values():
    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[3.0, -1.0]]))
        student.bias.fill_(2.0)
        teacher.weight.copy_(torch.tensor([[1.0, 1.0]]))
        teacher.bias.fill_(0.0)
    ema_update(student, teacher, 0.9)
    torch.testing.assert_close(teacher.weight, torch.tensor([[1.2, 0.8]]))
    torch.testing.assert_close(teacher.bias, torch.tensor([0.2]))
    torch.testing.assert_close(student.weight, torch.tensor([[3.0, -1.0]]))  # untouched


def test_head_weight_norm_groups_and_frozen_last_layer():
    torch.manual_seed(0)
    head = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=6, norm_last_layer=True)
    x = torch.randn(5, 8)
    assert head(x).shape == (5, 16)
    w = head.last_layer.weight  # effective weight g * v / |v| with g = 1
    torch.testing.assert_close(w.norm(dim=1), torch.ones(16))
    names = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original0" not in names  # g frozen
    groups = param_groups(head)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0.0
    assert id(head.mlp[0].bias) not in decayed and id(head.mlp[0].weight) in decayed
    free = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=6, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_clip_and_cancel_last_layer():
    torch.manual_seed(0)
    head = DINOHead(4, 3, hidden_dim=5, bottleneck_dim=2, norm_last_layer=False)
    head(torch.randn(6, 4)).pow(2).sum().mul(100).backward()
    before = {n: p.grad.clone() for n, p in head.named_parameters()}
    clip_gradients(head, 0.5)
    for n, p in head.named_parameters():
        norm = before[n].norm()
        want = before[n] * min(1.0, 0.5 / (norm.item() + 1e-6))
        torch.testing.assert_close(p.grad, want)
        assert p.grad.norm() <= 0.5 + 1e-5
    cancel_last_layer_grads(1, head, freeze_last_layer=1)  # epoch 1: kept
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    cancel_last_layer_grads(0, head, freeze_last_layer=1)  # epoch 0: dropped
    assert all(p.grad is None for n, p in head.named_parameters() if "last_layer" in n)
    assert head.mlp[0].weight.grad is not None


def test_multicrop_wrapper_groups_sizes():
    from soilssl.core.backbone import create_model
    torch.manual_seed(0)
    bb = create_model("vit_tiny_patch16_224", 3, 32, dynamic_img_size=True).eval()
    head = DINOHead(192, 7, hidden_dim=8, bottleneck_dim=4)
    wrapper = MultiCropWrapper(bb, head).eval()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32),
             torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        out = wrapper(crops)
        want = head(torch.cat([bb(c) for c in crops]))
    assert out.shape == (10, 7)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


def _dihedral(a):
    outs = []
    for k in range(4):
        r = torch.rot90(a, k, dims=(-2, -1))
        outs += [r, torch.flip(r, dims=(-1,))]
    return outs


def test_augmentation_shapes_and_dem_untouched():
    assert default_local_size(224) == 96
    assert default_local_size(64) == 32
    assert default_local_size(32) == 16
    torch.manual_seed(0)
    x = torch.randn(3, 4, 32, 32)  # 3 optical bands + a DEM channel
    aug = MultiCropAugmentation(32, optical_channels=3, local_crops_number=3,
                                global_crops_scale=(1.0, 1.0), jitter_p=1.0, grayscale_p=0.0)
    views = aug(x, torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in views] == [(3, 4, 32, 32)] * 2 + [(3, 4, 16, 16)] * 3
    for i in range(3):
        for v in views[:2]:  # full-tile global views: only a flip/rotation of the DEM
            assert any(torch.equal(v[i, 3], d) for d in _dihedral(x[i, 3]))
            assert not any(torch.allclose(v[i, :3], d, atol=1e-3) for d in _dihedral(x[i, :3]))
    # same draws with the DEM counted as optical: now it is colour-transformed too
    aug4 = MultiCropAugmentation(32, optical_channels=4, local_crops_number=3,
                                 global_crops_scale=(1.0, 1.0), jitter_p=1.0, grayscale_p=0.0)
    views4 = aug4(x, torch.Generator().manual_seed(1))
    assert not all(any(torch.equal(v[i, 3], d) for d in _dihedral(x[i, 3]))
                   for v in views4[:2] for i in range(3))
    # a constant DEM stays constant through crops, resizing and rotations
    x[:, 3] = 7.0
    for v in aug(x, torch.Generator().manual_seed(2)):
        torch.testing.assert_close(v[:, 3], torch.full_like(v[:, 3], 7.0))


def test_augmentation_is_seeded():
    x = torch.randn(2, 3, 32, 32)
    aug = MultiCropAugmentation(32, 3, local_crops_number=2)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_solarize_and_blur_hand_values():
    aug = MultiCropAugmentation(224, 3)
    z = torch.tensor([[[-1.0, 0.0, 2.0]]])
    torch.testing.assert_close(aug.solarize(z), torch.tensor([[[-1.0, 0.0, -2.0]]]))
    m = aug.blur_matrix(5, 1.0)
    torch.testing.assert_close(m.sum(0), torch.ones(5))  # each output a weighted mean
    const = torch.full((1, 5, 5), 3.0)
    torch.testing.assert_close(aug.gaussian_blur(const, 1.0), const)
    k = torch.exp(-0.5 * torch.arange(-3, 4.0) ** 2)
    k = k / k.sum()
    line = torch.zeros(1, 9, 9)
    line[0, :, 4] = 1.0  # a vertical line: blurred across, unchanged along
    out = aug.gaussian_blur(line, 1.0)
    torch.testing.assert_close(out[0, 4, 1:8], k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0, :, 4], torch.full((9,), float(k[3])))


def test_head_state_reads_facebookresearch_dino_heads():
    """A head saved by facebookresearch/dino (DDP 'module.' prefix, torch.nn.utils.weight_norm
    keys weight_g/weight_v) loads into DINOHead and computes the same outputs."""
    import warnings
    import torch.nn as nn
    from soilssl.core.dino import checkpoint_heads, head_dims, head_fits, head_state

    class ReferenceHead(nn.Module):  # main_dino.py's DINOHead (use_bn=False, nlayers=3)
        def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                     nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                     nn.Linear(hidden_dim, bottleneck_dim))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.last_layer = nn.utils.weight_norm(
                    nn.Linear(bottleneck_dim, out_dim, bias=False))
            self.last_layer.weight_g.data.uniform_(0.5, 2.0)

        def forward(self, x):
            x = nn.functional.normalize(self.mlp(x), dim=-1, p=2)
            return self.last_layer(x)

    torch.manual_seed(0)
    ref = ReferenceHead(12, 20, 16, 8)
    sd = {"module.head." + k: v for k, v in ref.state_dict().items()}
    sd["module.backbone.cls_token"] = torch.zeros(1, 1, 12)
    state = head_state(sd)
    assert "last_layer.parametrizations.weight.original0" in state and "cls_token" not in state
    assert head_dims(state) == {"in_dim": 12, "hidden_dim": 16, "bottleneck_dim": 8,
                                "out_dim": 20, "nlayers": 3}
    ours = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    assert head_fits(ours, state) and not head_fits(DINOHead(12, 24, 16, 8), state)
    ours.load_state_dict(state)
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), ref(x))
    heads = checkpoint_heads({"teacher": {"head." + k: v for k, v in ref.state_dict().items()},
                              "dino_loss": {"center": torch.ones(1, 20)}})
    assert heads["student"] is heads["teacher"] and heads["center"].shape == (1, 20)
    assert checkpoint_heads({"state_dict": {"cls_token": torch.zeros(1)}}) is None


# -- the batched (GPU) augmentation path, checked on the CPU -------------------------

def test_batched_views_full_tile_are_exact_dihedral_copies():
    """Scale 1, no colour: each batched view is one of the 8 turns/flips of its tile,
    exactly (bicubic sampling at pixel centres), and the turns vary between tiles."""
    torch.manual_seed(0)
    x = torch.randn(24, 4, 16, 16)
    aug = MultiCropAugmentation(16, 3, global_crops_scale=(1.0, 1.0), jitter_p=0.0,
                                grayscale_p=0.0, batched=True)
    v = aug.batch_view(x, torch.Generator().manual_seed(3), 16, (1.0, 1.0), 0.0, 0.0)
    assert v.shape == x.shape
    seen = set()
    for i in range(len(x)):
        hits = [j for j, d in enumerate(_dihedral(x[i])) if torch.allclose(v[i], d, atol=1e-5)]
        assert len(hits) == 1, i
        seen.add(hits[0])
    assert len(seen) >= 4


def test_batched_crop_theta_matches_slicing_turns_and_flips():
    """crop_theta + grid_sample = the slice, turned by torch.rot90 and flipped by
    torch.flip, for every turn and flip (no resizing: exact at pixel centres)."""
    x = torch.randn(8, 3, 32, 24)
    k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    flip = torch.tensor([False] * 4 + [True] * 4)
    theta = MultiCropAugmentation.crop_theta(torch.full((8,), 4), torch.full((8,), 6),
                                             torch.full((8,), 16), torch.full((8,), 16), k, flip,
                                             32, 24)
    grid = torch.nn.functional.affine_grid(theta.float(), [8, 3, 16, 16], align_corners=False)
    v = torch.nn.functional.grid_sample(x, grid, mode="bicubic", padding_mode="border",
                                        align_corners=False)
    for i in range(8):
        want = torch.rot90(x[i, :, 4:20, 6:22], int(k[i]), dims=(-2, -1))
        if flip[i]:
            want = torch.flip(want, dims=(-1,))
        torch.testing.assert_close(v[i], want, atol=1e-5, rtol=1e-5)


def test_batched_crop_sizes_follow_the_scale_range():
    aug = MultiCropAugmentation(64, 3)
    theta = aug.crop_grid(torch.Generator().manual_seed(0), 4000, 64, 64, 32, (0.05, 0.4))
    share = theta[:, 0, :2].abs().sum(1) * theta[:, 1, :2].abs().sum(1)  # crop area / tile
    assert share.min() >= 0.04 and share.max() <= 0.42  # rounding to whole pixels
    assert abs(float(share.mean()) - 0.225) < 0.01
    centre = theta[:, :, 2]  # crops lie inside the tile
    assert (centre.abs() + theta[:, :, :2].abs().sum(2) <= 1 + 1e-9).all()


def test_batched_brightness_is_per_tile_affine_and_dem_untouched():
    torch.manual_seed(1)
    x = torch.randn(16, 4, 16, 16)
    x[:, 3] = 5.0  # a constant DEM channel
    aug = MultiCropAugmentation(16, 3, jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0,
                                grayscale_p=0.0, batched=True)
    z = aug.color_jitter_batch(x[:, :3].clone(), torch.Generator().manual_seed(2))
    f = []
    for i in range(16):  # z = f x + 2 (f - 1) with one f per tile in [0.6, 1.4]
        fi = float(((z[i] + 2) * (x[i, :3] + 2)).sum() / ((x[i, :3] + 2) ** 2).sum())
        torch.testing.assert_close(z[i], fi * x[i, :3] + 2 * (fi - 1), rtol=1e-4, atol=1e-4)
        assert 0.6 - 1e-6 <= fi <= 1.4 + 1e-6
        f.append(fi)
    assert np.std(f) > 0.05  # not one factor for the whole batch
    views = aug(x, torch.Generator().manual_seed(4))
    for v in views:
        torch.testing.assert_close(v[:, 3], torch.full_like(v[:, 3], 5.0))


def test_batched_blur_matrices_match_the_single_ones():
    aug = MultiCropAugmentation(32, 3)
    sig = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    m = aug.blur_matrices(12, sig)
    for i, s in enumerate(sig.tolist()):
        torch.testing.assert_close(m[i], aug.blur_matrix(12, s, torch.float64))


def test_batched_views_seeded_and_shaped():
    x = torch.randn(3, 3, 32, 32)
    aug = MultiCropAugmentation(32, 3, local_crops_number=2, batched=True)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert [tuple(v.shape) for v in a] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert all(torch.isfinite(v).all() for v in a)


def test_clip_gradients_caps_each_parameters_norm_as_dino_does():
    from soilssl.core.dino import clip_gradients
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for p, scale in zip(model.parameters(), (100.0, 1e-3, 5.0, 0.0)):
        p.grad = torch.randn_like(p) * scale
    model[1].bias.grad = None  # a parameter without gradient is left alone
    expected = [None if p.grad is None else
                p.grad * min(1.0, 2.0 / (float(p.grad.norm()) + 1e-6))
                for p in model.parameters()]
    clip_gradients(model, 2.0)
    for p, e in zip(model.parameters(), expected):
        if e is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, e)
            assert float(p.grad.norm()) <= 2.0 + 1e-5
    norms = [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]
    assert norms[0] == pytest.approx(2.0, rel=1e-5) and norms[1] < 0.1  # capped / untouched
