"""The VQ-VAE model: shapes, gradient paths through the quantizer, and save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from minidalle.config import ConfigError
from minidalle.hub import CONFIG_NAME, WEIGHTS_NAME, file_fingerprint, fingerprint_matches, model_fingerprint
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.model import VQVAE, Upsample, psnr, ssim
from stage1_vqvae.quantizer import VectorQuantizer


def tiny_config(**overrides) -> VQVAEConfig:
    values = dict(
        resolution=32, base_channels=16, channel_multipliers=[1, 2, 2], codebook_size=64, codebook_dim=4
    )
    values.update(overrides)
    return VQVAEConfig(**values)


@pytest.mark.parametrize("multipliers,grid", [([1, 2, 2], 8), ([1, 2], 16), ([1, 1, 2, 2], 4)])
def test_encoder_output_shapes(multipliers, grid):
    model = VQVAE(tiny_config(channel_multipliers=multipliers))
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    out = model(pixels)
    assert out.z_e.shape == (3, 4, grid, grid)
    assert out.codes.shape == (3, grid, grid) and out.codes.dtype == torch.int64
    assert out.reconstruction.shape == pixels.shape
    assert model.encode(pixels).shape == (3, grid, grid)
    # Non-square and other-resolution inputs work too: the model is convolutional.
    assert model.encode(torch.zeros(1, 3, 64, 32)).shape == (1, 64 // (32 // grid), 32 // (32 // grid))


def test_codes_are_nearest_codebook_entries():
    quantizer = VectorQuantizer(codebook_size=16, codebook_dim=3, l2_normalize=False)
    z_e = torch.randn(2, 3, 4, 4)
    codes = quantizer(z_e).codes  # (2, 4, 4)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, quantizer.codebook.weight).argmin(1)
    assert torch.equal(codes.flatten(), brute)


def test_codes_under_bf16_autocast_equal_fp32_codes():
    # 8192 unit-norm codes of dim 8 lie close together: under bf16 matmuls about 5% of the argmins
    # flip. The quantizer must pick the same codes whatever the mixed precision of the run.
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=8192, codebook_dim=8).eval()
    z_e = torch.randn(16, 8, 16, 16)
    reference = quantizer.codes(z_e)  # (16, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer.codes(z_e), reference)
        assert torch.equal(quantizer(z_e.bfloat16()).codes, quantizer.codes(z_e.bfloat16()))
        assert torch.equal(quantizer(z_e).codes, reference)


def test_gradients_reach_encoder_through_quantizer():
    model = VQVAE(tiny_config())
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(pixels)
    # Reconstruction loss alone: its gradient must cross the argmin (straight-through) into the encoder.
    torch.nn.functional.mse_loss(out.reconstruction, pixels).backward()
    first_conv = model.encoder.net[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    # ... and it does not move the codebook (only the codebook loss does).
    assert (
        model.quantizer.codebook.weight.grad is None or model.quantizer.codebook.weight.grad.abs().sum() == 0
    )


@pytest.mark.parametrize("l2", [True, False])
def test_codebook_loss_moves_only_codebook_and_commitment_only_encoder(l2):
    model = VQVAE(tiny_config(l2_normalize=l2))
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1

    out = model(pixels)
    out.quantizer.codebook_loss.backward()
    assert model.quantizer.codebook.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())

    model.zero_grad(set_to_none=True)
    out = model(pixels)
    out.quantizer.commitment_loss.backward()
    assert (
        model.quantizer.codebook.weight.grad is None or model.quantizer.codebook.weight.grad.abs().sum() == 0
    )
    assert model.encoder.net[0].weight.grad.abs().sum() > 0


def test_beta_weights_the_commitment_term_only():
    model = VQVAE(tiny_config(beta=0.7))
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(pixels)
    expected = out.quantizer.codebook_loss + 0.7 * out.quantizer.commitment_loss
    assert torch.allclose(out.quantizer.loss(model.config.beta), expected)


def test_encode_decode_round_trip_is_consistent():
    torch.manual_seed(0)
    model = VQVAE(tiny_config()).eval()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(pixels)
    codes = model.encode(pixels)
    assert torch.equal(codes, out.codes)
    decoded = model.decode_codes(codes)
    assert torch.allclose(decoded, out.reconstruction.clamp(-1, 1), atol=1e-5)
    # decoding then re-encoding is stable for the codes themselves
    assert model.decode_codes(codes).shape == pixels.shape
    with pytest.raises(ValueError, match="Codes must lie in"):
        model.decode_codes(torch.full((1, 8, 8), 64))


def test_cpu_chunks_give_the_codes_and_pixels_of_one_pass(monkeypatch):
    torch.manual_seed(0)
    model = VQVAE(tiny_config()).eval()
    codes = torch.randint(0, 64, (7, 8, 8))
    pixels = torch.rand(7, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        decoded = model.decoder(model.quantizer.lookup(codes)).clamp(-1, 1)  # (7, 3, 32, 32)
        encoded = model.quantizer.codes(model.encoder(pixels))  # (7, 8, 8)
        monkeypatch.setattr("stage1_vqvae.model.CPU_CHUNK_FLOATS", 3 * 32 * 32 * 32)  # 3 images per chunk
        assert [len(part) for part in model._cpu_chunks(codes)] == [3, 3, 1]
        # oneDNN may pick other kernels for other batch sizes: the pixels agree up to float rounding
        torch.testing.assert_close(model.decode_codes(codes), decoded, atol=1e-5, rtol=0)
        assert torch.equal(model.encode(pixels), encoded)


def test_folded_upsample_computes_upsample_then_conv():
    torch.manual_seed(0)
    up = Upsample(6)
    x = torch.randn(3, 6, 5, 7)  # (B, C, h, w): odd and unequal sides
    with torch.no_grad():
        plain = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (3, 6, 10, 14)
        torch.testing.assert_close(up.folded(x), plain, atol=1e-5, rtol=0)
        assert torch.equal(up(x), plain)  # float32 keeps the plain form
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = up(x.bfloat16())  # the folded form, in bf16
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), plain, atol=0.05, rtol=0.05)
    # with gradients (training) the layer trains as before: its weights get gradients
    up(x).sum().backward()
    assert up.conv.weight.grad is not None and up.conv.weight.grad.abs().sum() > 0


def test_bf16_decode_stays_within_a_few_levels_of_fp32():
    torch.manual_seed(0)
    model = VQVAE(tiny_config()).eval()
    codes = torch.randint(0, 64, (5, 8, 8))
    exact = model.decode_codes(codes)  # (5, 3, 32, 32) float32
    low = model.decode_codes(codes, compute_dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == exact.shape
    levels = (low - exact).abs() * 127.5  # in steps of an 8-bit pixel
    assert 0 < levels.max() < 16 and levels.mean() < 1.5  # bf16 did run, and stays close
    same = model.decode_codes(codes, compute_dtype=torch.float32)  # the model's own dtype: nothing changes
    assert torch.equal(same, exact)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(tiny_config()).eval()
    model.quantizer.usage.fill_(3.0)
    model.save_pretrained(tmp_path / "vqvae")
    assert sorted(p.name for p in (tmp_path / "vqvae").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "vqvae" / "config.json").read_text())
    assert config["codebook_size"] == 64 and config["model_type"] == "minidalle-vqvae"
    loaded = VQVAE.from_pretrained(tmp_path / "vqvae")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encode(pixels), loaded.encode(pixels))


def _rewrite_metadata_reversed(weights) -> None:
    """The file as another process may write it: the same tensors, safetensors' metadata keys reversed."""
    raw = weights.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data stays 8-byte aligned
    weights.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + size :])


def test_fingerprint_names_the_weights_not_the_file_bytes(tmp_path):
    """Rerunning a finished stage 1 re-exports its model; safetensors may write the metadata in another
    order, and that must not make the stage-2 run or the pipeline refuse the same model."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(resolution=16, base_channels=8, codebook_size=16))
    model.save_pretrained(tmp_path / "a")
    before = model_fingerprint(tmp_path / "a")
    recorded_as_bytes = file_fingerprint(tmp_path / "a" / CONFIG_NAME, tmp_path / "a" / WEIGHTS_NAME)
    _rewrite_metadata_reversed(tmp_path / "a" / WEIGHTS_NAME)
    assert file_fingerprint(tmp_path / "a" / CONFIG_NAME, tmp_path / "a" / WEIGHTS_NAME) != recorded_as_bytes
    assert model_fingerprint(tmp_path / "a") == before
    assert VQVAE.from_pretrained(tmp_path / "a").config == model.config
    # another weight value, or another config, is another model
    with torch.no_grad():
        model.quantizer.codebook.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "b")
    assert model_fingerprint(tmp_path / "b") != before
    VQVAE(VQVAEConfig(resolution=16, base_channels=8, codebook_size=16, beta=0.5)).save_pretrained(
        tmp_path / "c"
    )
    assert model_fingerprint(tmp_path / "c") != model_fingerprint(tmp_path / "a")
    # a digest of the file bytes, as records written before content fingerprints hold, still verifies
    model.save_pretrained(tmp_path / "d")
    old_record = file_fingerprint(tmp_path / "d" / CONFIG_NAME, tmp_path / "d" / WEIGHTS_NAME)
    assert fingerprint_matches(tmp_path / "d", old_record)
    assert not fingerprint_matches(tmp_path / "d", before) and not fingerprint_matches(tmp_path / "d", None)


def test_from_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VQVAE.from_pretrained(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        VQVAE.from_pretrained(tmp_path / "half")
    VQVAE(tiny_config()).save_pretrained(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["codebok_size"] = config.pop("codebook_size")
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="codebook_size"):
        VQVAE.from_pretrained(tmp_path / "ok")


def test_dead_codes_are_restarted_onto_encoder_outputs():
    quantizer = VectorQuantizer(codebook_size=8, codebook_dim=2, l2_normalize=False)
    quantizer.usage.copy_(torch.tensor([5.0, 5.0, 0.0, 0.0, 5.0, 5.0, 5.0, 0.0]))
    z_e = torch.full((1, 2, 2, 2), 3.0)
    restarted = quantizer.restart_dead_codes(z_e, threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert restarted == 3
    assert torch.allclose(quantizer.codebook.weight[[2, 3, 7]], torch.full((3, 2), 3.0))
    assert (quantizer.usage >= 1.0).all()


def test_kmeans_init_uses_all_codes_on_clustered_data():
    quantizer = VectorQuantizer(codebook_size=4, codebook_dim=2, l2_normalize=True)
    angles = torch.tensor([0.0, 1.5, 3.0, 4.5]).repeat_interleave(50) + 0.01 * torch.randn(200)
    points = torch.stack([angles.cos(), angles.sin()], 1)  # (200, 2)
    z_e = points.T.reshape(1, 2, 10, 20)
    quantizer.kmeans_init(z_e, generator=torch.Generator().manual_seed(0))
    codes = quantizer(z_e).codes
    assert codes.unique().numel() == 4


def test_psnr():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a).item() > 90
    b = a + 0.2  # mse 0.04 on a peak-to-peak range of 2 -> 10 log10(4 / 0.04) = 20 dB
    assert abs(psnr(b, a).item() - 20.0) < 1e-4


def test_ssim_matches_its_closed_forms():
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(image, image), torch.ones(2), atol=1e-5)
    # Two flat images a and b (in [0, 1]): no variance, so SSIM = (2ab + c1) / (a^2 + b^2 + c1).
    a, b, c1 = 0.2, 0.7, 0.01**2
    flat_a, flat_b = torch.full((1, 3, 16, 16), 2 * a - 1), torch.full((1, 3, 16, 16), 2 * b - 1)
    assert ssim(flat_a, flat_b).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=2e-3)
    # An inverted image keeps its means' term near 1 and turns its structure term negative.
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::2] = 1.0
    assert ssim(stripes - 0.5, 0.5 - stripes).item() < 0
    noisy = (image + 0.3 * torch.randn_like(image)).clamp(-1, 1)
    assert (ssim(noisy, image) < ssim((image + 0.05 * torch.randn_like(image)).clamp(-1, 1), image)).all()


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        VQVAEConfig(resolution=36, channel_multipliers=[1, 2, 2, 2])
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAEConfig(codebook_size=1)
