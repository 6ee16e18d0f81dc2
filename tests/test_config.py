"""YAML configs onto dataclasses: every shipped config parses; bad keys and values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from minidalle.config import ConfigError, parse_config
from reranker.run_config import RerankerRunConfig
from stage1_vqvae.run_config import Stage1RunConfig
from stage2_transformer.run_config import Stage2RunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["stage1_tiny", "stage1_gpu"])
def test_stage1_configs_parse(name):
    cfg = parse_config(Stage1RunConfig, ["--config", str(CONFIGS / f"{name}.yaml")])
    assert cfg.model.resolution == cfg.data.resolution


def test_gpu_configs_are_real_scale():
    s1 = parse_config(Stage1RunConfig, ["--config", str(CONFIGS / "stage1_gpu.yaml")])
    assert (
        s1.data.resolution == 256 and s1.model.downsample_factor in (8, 16) and s1.model.codebook_size >= 8192
    )
    assert s1.train.mixed_precision == "bf16"
    s2 = parse_config(Stage2RunConfig, ["--config", str(CONFIGS / "stage2_gpu.yaml")])
    h = s2.model.hidden_size
    approx_params = s2.model.num_layers * (4 * h * h + 3 * h * s2.model.mlp_size)
    assert 100e6 < approx_params < 1e9


@pytest.mark.parametrize(
    "name", ["stage2_tiny", "stage2_gpu", "stage2_emoji32_gpu", "stage2_emoji32_8x8_large"]
)
def test_stage2_configs_parse(name):
    parse_config(Stage2RunConfig, ["--config", str(CONFIGS / f"{name}.yaml")])


@pytest.mark.parametrize("name", ["reranker_tiny", "reranker_emoji32", "reranker_gpu"])
def test_reranker_configs_parse(name):
    cfg = parse_config(RerankerRunConfig, ["--config", str(CONFIGS / f"{name}.yaml")])
    assert cfg.data.resolution % cfg.model.patch_size == 0


@pytest.mark.parametrize(
    "name, size, schedule",
    [  # (hidden, layers, heads, dropout), (caption tokens, batch, steps, learning rate)
        ("stage2_emoji32_gpu", (768, 12, 12, 0.1), (4096, 128, 1000, 3e-4)),
        ("stage2_emoji32_8x8_large", (384, 8, 6, 0.1), (4096, 64, 1500, 5e-4)),
    ],
)
def test_emoji_priors_are_the_measured_ones(name, size, schedule):
    """The larger emoji priors hold what their headers measured, on the 8x8 stage 1 the demo trains."""
    cfg = parse_config(Stage2RunConfig, ["--config", str(CONFIGS / f"{name}.yaml")])
    m, t = cfg.model, cfg.train
    assert (m.hidden_size, m.num_layers, m.num_heads, m.dropout) == size
    assert (cfg.tokenizer.vocab_size, t.batch_size, t.max_steps, t.learning_rate) == schedule
    assert cfg.vqvae == "outputs/stage1_emoji32_8x8/vqvae"


def test_command_line_overrides_and_types():
    overrides = [
        "--train.learning_rate",
        "1e-4",
        "--train.max_steps=7",
        "--model.channel_multipliers",
        "[1, 2]",
    ]
    overrides += ["--resume_from_checkpoint", "latest", "--train.stop_after_steps", "none"]
    cfg = parse_config(Stage1RunConfig, ["--config", str(CONFIGS / "stage1_tiny.yaml"), *overrides])
    assert cfg.train.learning_rate == 1e-4 and cfg.train.max_steps == 7
    assert cfg.model.channel_multipliers == [1, 2] and cfg.model.grid_size == 16
    assert cfg.train.resume_from_checkpoint == "latest" and cfg.train.stop_after_steps is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--train.learnig_rate", "1"], "Did you mean 'learning_rate'"),
        (["--nonsense.key", "1"], "Unknown config key"),
        (["--train.max_steps", "ten"], "expects an integer"),
        (["--train.max_steps", "2.5"], "expects an integer"),
        (["--train.learning_rate", "fast"], "expects a number"),
        (["--model.l2_normalize", "maybe"], "expects true/false"),
        (["--train.max_steps", "0"], "max_steps must be >= 1"),
        (["--train.mixed_precision", "fp8"], "mixed_precision"),
        (["--data.source", "ftp"], "data.source"),
        (["--train.max_steps"], "needs a value"),
        (["--config", "configs/missing.yaml"], "does not exist"),
    ],
)
def test_bad_configuration_is_a_clear_error(args, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        parse_config(Stage1RunConfig, ["--config", str(CONFIGS / "stage1_tiny.yaml"), *args])


def test_unknown_key_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stesp: 3\n")
    with pytest.raises(ConfigError, match="max_stesp.*Did you mean 'max_steps'"):
        parse_config(Stage1RunConfig, ["--config", str(bad)])
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="is a section"):
        parse_config(Stage1RunConfig, ["--config", str(bad)])


def test_no_is_a_word_for_string_settings_and_false_for_boolean_ones(tmp_path):
    # YAML 1.1 reads a bare `no` as False, which made `mixed_precision: no` an error.
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  mixed_precision: no\n  compile: no\n  tf32: yes\n")
    cfg = parse_config(Stage1RunConfig, ["--config", str(config)])
    assert cfg.train.mixed_precision == "no" and cfg.train.compile is False and cfg.train.tf32 is True
    cfg = parse_config(Stage1RunConfig, ["--config", str(config), "--train.mixed_precision", "no"])
    assert cfg.train.mixed_precision == "no"
