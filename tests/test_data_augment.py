"""Tensor augmentations: shapes, value range, probabilities, identity at magnitude 0, exact geometry,
and reproducibility with a generator."""

import pytest
import torch

from spiketwin.data.augment import (
    RAND_AUGMENT_OPS,
    Compose,
    Normalize,
    RandAugment,
    RandomCrop,
    RandomErasing,
    RandomHorizontalFlip,
    spikformer_cifar_augmentation,
    spikformer_dvs_augmentation,
    equalize,
    posterize,
    rotate,
    solarize,
    translate_x,
)


def images(b=16, c=3, h=12, w=10, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("op", list(RAND_AUGMENT_OPS))
def test_each_op_is_identity_at_magnitude_zero(op):
    x = (images() * 255).round() / 255  # 8-bit values, as decoded images are
    out = RandAugment(num_ops=3, magnitude=0, ops=[op])(x, gen())
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", list(RAND_AUGMENT_OPS))
def test_each_op_keeps_shape_and_range_and_changes_images(op):
    x = images()
    out = RandAugment(num_ops=1, magnitude=10, ops=[op])(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    if op != "identity":
        assert not torch.allclose(out, x)


def test_rotate_90_is_rot90_and_translate_moves_whole_pixels():
    x = images(2, 3, 9, 9)
    torch.testing.assert_close(rotate(x, torch.full((2,), 90.0)), torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-5)
    y = images(2, 1, 6, 8)
    out = translate_x(y, torch.tensor([0.25, -0.25]), fill=0.5)  # 2 of 8 columns
    torch.testing.assert_close(out[0, ..., 2:], y[0, ..., :-2], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, ..., :-2], y[1, ..., 2:], rtol=0, atol=1e-5)
    assert torch.allclose(out[0, ..., :2], torch.tensor(0.5)) and torch.allclose(out[1, ..., -2:], torch.tensor(0.5))
    rgb = translate_x(images(1, 3, 4, 4), torch.tensor([0.5]), fill=(0.1, 0.2, 0.3))  # one fill per channel
    torch.testing.assert_close(rgb[0, :, :, :2].mean((1, 2)), torch.tensor([0.1, 0.2, 0.3]))


def test_pointwise_ops_follow_their_definitions():
    x = (images() * 255).round() / 255
    q = posterize(x, torch.full((16,), 4.0))
    assert torch.equal((q * 255).round() % 16, torch.zeros_like(q))
    s = solarize(x, torch.full((16,), 0.5))
    assert torch.equal(s, torch.where(x > 0.5, 1 - x, x))
    e = equalize(x, torch.ones(16))
    assert torch.allclose(e.amin((2, 3)), torch.tensor(0.0)) and torch.allclose(e.amax((2, 3)), torch.tensor(1.0))
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert torch.equal(equalize(flat, torch.ones(1)), flat)  # a constant channel has nothing to equalise


def test_flip_probability_and_content():
    x = images(4000, 1, 2, 3)
    out = RandomHorizontalFlip(0.5)(x, gen(1))
    flipped = (out != x).flatten(1).any(1)
    assert 0.46 < flipped.float().mean() < 0.54
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x, gen()), x)
    assert torch.equal(RandomHorizontalFlip(1.0)(x, gen()), x.flip(-1))


def test_random_crop_cuts_windows_of_the_padded_image():
    x = images(32, 2, 6, 5)
    out = RandomCrop((6, 5), padding=2, fill=-1.0)(x, gen(2))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    offsets = set()
    for b in range(32):
        hits = [(i, j) for i in range(5) for j in range(5) if torch.equal(padded[b, :, i:i + 6, j:j + 5], out[b])]
        assert hits, f"sample {b} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets vary per sample
    assert torch.equal(RandomCrop((6, 5), padding=0)(x, gen()), x)
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(20, padding=1)(x)


def test_random_erasing_probability_area_and_value():
    x = images(3000, 3, 12, 12) * 0.5 + 0.25  # values in [0.25, 0.75], so erased pixels (value 0) show
    out = RandomErasing(p=0.25, value=0.0)(x, gen(3))
    erased = out == 0
    hit = erased.flatten(1).any(1)
    assert 0.22 < hit.float().mean() < 0.28
    assert torch.equal(out[~erased], x[~erased])
    frac = erased[hit][:, 0].flatten(1).float().mean(1)
    assert frac.min() >= 0.01 and frac.max() <= 0.45  # area fraction in [0.02, 1/3] up to rounding h and w
    assert torch.equal(erased.all(1), erased.any(1))  # same region in every channel
    rect = erased[hit][:, 0]
    rows, cols = rect.any(2), rect.any(1)  # a rectangle: its area = rows spanned x columns spanned
    assert torch.equal(rect.flatten(1).sum(1), rows.sum(1) * cols.sum(1))
    noisy = RandomErasing(p=1.0, value="normal")(x[:8], gen(4))
    assert (noisy < 0).any()


def test_same_generator_seed_same_batch_and_single_images():
    aug = Compose([RandomCrop(12, padding=4), spikformer_cifar_augmentation(), RandomErasing(0.5, value="normal")])
    x = images(8, 3, 12, 12)
    a, b, c = aug(x, gen(7)), aug(x, gen(7)), aug(x, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert aug(x[0], gen(7)).shape == (3, 12, 12)
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip: expected \[B, C, H, W\]"):
        RandomHorizontalFlip()(torch.zeros(4))
    with pytest.raises(ValueError, match="unknown ops"):
        RandAugment(ops=["sharpen"])


def test_normalize():
    x = images(2, 3, 4, 4)
    out = Normalize((0.1, 0.2, 0.3), (0.5, 0.5, 2.0))(x)
    torch.testing.assert_close(out[:, 2], (x[:, 2] - 0.3) / 2.0)
    with pytest.raises(ValueError, match="3 channel statistics for 1 channels"):
        Normalize((0.1, 0.2, 0.3), (1, 1, 1))(x[:, :1])


def test_uniform_magnitude_and_amount_override():
    x = torch.full((2000, 1, 2, 2), 0.5)
    fixed = RandAugment(1, 10, ops=["brightness"])(x, gen(5))
    assert fixed.unique().tolist() == pytest.approx([0.05, 0.95])
    uniform = RandAugment(1, 10, magnitude_std=float("inf"), ops=["brightness"])(x, gen(5))[:, 0, 0, 0]
    assert uniform.unique().numel() > 1000 and uniform.min() < 0.1 and uniform.max() > 0.9
    assert 0.45 < uniform.mean() < 0.55  # random sign: symmetric around 0.5
    y = images(1, 1, 4, 8)
    moved = RandAugment(1, 10, ops=["translate_x"], max_amounts={"translate_x": 0.25}, fill=0.0)(y, gen(6))
    assert torch.allclose(moved[..., 2:], y[..., :-2], atol=1e-5) or torch.allclose(moved[..., :-2], y[..., 2:],
                                                                                   atol=1e-5)
    with pytest.raises(ValueError, match="unknown ops"):
        RandAugment(ops=["rotate"], max_amounts={"zoom": 1.0})


def test_event_frames_move_together_and_keep_integer_counts():
    frame = torch.randint(0, 4, (6, 1, 2, 16, 16)).float()
    x = frame.expand(6, 5, 2, 16, 16)  # [B, T, 2, H, W], the same frame at every step
    out = spikformer_dvs_augmentation(size=16)(x, gen(9))
    assert out.shape == x.shape
    assert torch.equal(out, out[:, :1].expand_as(out))  # one transform per sample, shared by its frames
    assert torch.equal(out, out.round()) and out.min() >= 0  # nearest neighbour, zero fill: still counts
    assert not torch.equal(out, x)
