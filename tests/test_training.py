"""Training: real-data overfit, kill-and-resume equivalence, 2-process CPU (gloo), dropout rates."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusionsat import DiffusionSatPipeline
from diffusionsat.cli.main import main
from diffusionsat.metadata import METADATA_FIELDS
from diffusionsat.training import Trainer, list_checkpoints, load_config
from diffusionsat.training.config import parse_override_args
from diffusionsat.training.datasets import build_dataset
from diffusionsat.training.trainer import draw_sample_randomness

NAIP = "naip-timeseries/m_4709963_se_14_1_20090818.tif"
PY = sys.executable


def base_overrides(shared_data: Path, out: Path, **extra) -> dict:
    values = {
        "data": [str(shared_data / NAIP)], "chip_size": 64, "bands": "1,2,3", "preset": "tiny",
        "max_samples": 8, "batch_size": 4, "max_steps": 6, "learning_rate": 1e-3, "checkpoint_every": 2,
        "keep_checkpoints": 2, "report_to": None, "output_dir": str(out), "seed": 3, "ema_decay": 0.9,
    }
    values.update(extra)
    return values


def as_flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flags += [f"--{key.replace('_', '-')}", "null" if value is None else (str(value) if not isinstance(value, list) else str(value))]
    return flags


def unet_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((model_dir / "unet").glob("*.safetensors")))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = unet_weights(a), unet_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-5, msg=key)


def test_loss_decreases_on_real_chips_and_model_loads(shared_data, tmp_path):
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "run", max_samples=4, max_steps=60,
                                               checkpoint_every=60, learning_rate=2e-3, caption_dropout=0.0,
                                               metadata_dropout=0.0, validate_every=60, validation_steps=2))
    trainer = Trainer(cfg, build_dataset(cfg))
    final = trainer.train()
    history = trainer.loss_history
    assert len(history) == 60
    assert np.mean(history[-15:]) < 0.8 * np.mean(history[:15]), history
    pipe = DiffusionSatPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a satellite image", metadata={"lat": 47.0, "lon": -99.2}, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    assert list((tmp_path / "run" / "validation").glob("step-*.png"))
    # the final folder is what `generate` takes
    assert main(["generate", "x", "--model", str(final), "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0


def test_kill_and_resume_matches_uninterrupted_run(shared_data, tmp_path):
    steps = 10

    def command(out: Path, *extra: str) -> list[str]:
        flags = as_flags(base_overrides(shared_data, out, max_steps=steps, checkpoint_every=2))
        return [PY, "-m", "diffusionsat", "train", *flags, *extra]

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ref = subprocess.run(command(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    victim = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        int(p.name.split("-")[1]) >= 4 for p in list_checkpoints(tmp_path / "killed")
    ):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    done = list_checkpoints(tmp_path / "killed")
    assert done and int(done[-1].name.split("-")[1]) < steps, "the run finished before it could be killed"
    resumed = subprocess.run(command(tmp_path / "killed", "--resume", "latest"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(tmp_path / "ref" / "model", tmp_path / "killed" / "model")
    assert len(list_checkpoints(tmp_path / "killed")) == 2  # keep_checkpoints
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*partial"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_cpu_run_equals_one_process_with_double_batch(shared_data, tmp_path):
    script = tmp_path / "run_rank.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        from safetensors.torch import save_file
        from diffusionsat.training import Trainer, load_config
        from diffusionsat.training.datasets import build_dataset
        from diffusionsat.training.config import parse_override_args
        cfg = load_config(overrides=parse_override_args(sys.argv[2:]))
        trainer = Trainer(cfg, build_dataset(cfg))
        trainer.train()
        unet = trainer.accelerator.unwrap_model(trainer.unet)
        rank = trainer.accelerator.process_index
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, sys.argv[1] + f"/rank{rank}.safetensors")
    """))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    two.mkdir()
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu-2proc.yaml"
    launch = [PY, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port", str(_free_port()),
              str(script), str(two), *as_flags(base_overrides(shared_data, two / "run", batch_size=2, max_steps=4))]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    for key in r0:
        torch.testing.assert_close(r0[key], r1[key], atol=0, rtol=0, msg=key)

    one = tmp_path / "one"
    one.mkdir()
    single = subprocess.run([PY, str(script), str(one),
                             *as_flags(base_overrides(shared_data, one / "run", batch_size=4, max_steps=4))],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    s0 = load_file(one / "rank0.safetensors")
    init = unet_weights(one / "run" / "base")
    # Same samples, same noise, gradients averaged by DDP: the updates agree up to float summation
    # order (which Adam amplifies for parameters whose true gradient is ~0, e.g. biases before a norm).
    diff = sum(((r0[k] - s0[k]) ** 2).sum() for k in r0).sqrt()
    update = sum(((s0[k] - init[k]) ** 2).sum() for k in r0).sqrt()
    assert update > 0
    assert diff / update < 1e-2, (diff / update).item()


def test_dropout_rates_are_honoured():
    cfg = load_config(overrides={"caption_dropout": 0.3, "metadata_dropout": 0.1,
                                 "metadata_dropout_fields": {"lat": 0.5, "year": 0.0}})
    _, timesteps, drop_caption, drop_md, _, _ = draw_sample_randomness(cfg, list(range(4000)), 0, (1, 1, 1), 1000)
    assert abs(drop_caption.float().mean().item() - 0.3) < 0.03
    rates = drop_md.float().mean(0)
    expected = [0.5 if f == "lat" else 0.0 if f == "year" else 0.1 for f in METADATA_FIELDS]
    for field, rate, want in zip(METADATA_FIELDS, rates.tolist(), expected):
        assert abs(rate - want) < 0.03, (field, rate)
    assert timesteps.min() >= 0 and timesteps.max() < 1000
    # the draws depend on (seed, epoch, sample) only
    again = draw_sample_randomness(cfg, [5, 7], 0, (2, 2, 2), 1000)
    first = draw_sample_randomness(cfg, list(range(8)), 0, (2, 2, 2), 1000)
    torch.testing.assert_close(again[0], first[0][[5, 7]])


def test_augmentation_symmetries_are_the_dihedral_group():
    from diffusionsat.training.trainer import apply_symmetry

    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    variants = {tuple(apply_symmetry(image, torch.tensor([s]))[0].flatten().tolist()) for s in range(8)}
    assert len(variants) == 8
    assert torch.equal(apply_symmetry(image, torch.tensor([0])), image)
    cfg = load_config(overrides={"augment": True})
    symmetry = draw_sample_randomness(cfg, list(range(800)), 0, (1, 1, 1), 1000)[4]
    assert set(symmetry.tolist()) == set(range(8))


def test_config_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rat' \(did you mean learning_rate"):
        load_config(overrides={"learning_rat": 1})
    with pytest.raises(ValueError, match="batch_size=0: must be >= 1"):
        load_config(overrides={"batch_size": "0"})
    with pytest.raises(ValueError, match="max_steps='ten': must be an integer"):
        load_config(overrides={"max_steps": "ten"})
    assert parse_override_args(["--use-ema", "false", "--seed=4"]) == {"use_ema": "false", "seed": "4"}
    (tmp_path / "bad.yaml").write_text("batch_size: 2\nnot_a_key: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown config key 'not_a_key'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--output-dir", str(tmp_path / "o"), "--report-to", "null"]) == 2
    assert "no usable samples" in capsys.readouterr().err or "no chips" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--preset", "small", "--resolution", "30", "--data", str(empty)]) == 2
    assert "needs a multiple of 4" in capsys.readouterr().err
    assert main(["train", "--preset", "sd21", "--data", str(empty)]) == 2
    assert "pretrained" in capsys.readouterr().err


def test_sample_size_must_match_preset(shared_data, tmp_path):
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "r"))
    dataset = build_dataset(cfg)
    cfg.resolution = 32
    with pytest.raises(ValueError, match=r"trains at 32x32"):
        Trainer(cfg, dataset).train()


def test_trains_from_webdataset_shards_made_by_prepare_data(shared_data, tmp_path):
    shards = tmp_path / "shards"
    assert main(["prepare-data", str(shared_data / NAIP), "--out", str(shards), "--chip-size", "128",
                 "--resize", "16", "--bands", "1,2,3", "--shard-size", "10"]) == 0
    assert len(list(shards.glob("*.tar"))) >= 2
    cfg = load_config(overrides={"data": [str(shards)], "preset": "tiny", "batch_size": 4, "max_steps": 3,
                                 "checkpoint_every": 2, "report_to": None, "output_dir": str(tmp_path / "run")})
    trainer = Trainer(cfg, build_dataset(cfg))
    final = trainer.train()
    assert len(trainer.loss_history) == 3 and (final / "model_index.json").is_file()
    assert trainer.state.samples_seen == 12


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; a run with other precision settings needs it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_checkpointing_accumulation_snr_and_schedules_run(shared_data, tmp_path, fresh_accelerate_state):
    cfg = load_config(overrides=base_overrides(
        shared_data, tmp_path / "run", mixed_precision="bf16", gradient_checkpointing=True,
        gradient_accumulation_steps=2, snr_gamma=5.0, lr_scheduler="cosine", lr_warmup_steps=1, max_steps=2,
        prediction_type="v_prediction", report_to="tensorboard", metadata_dropout_fields={"lat": 0.5}))
    trainer = Trainer(cfg, build_dataset(cfg))
    final = trainer.train()
    assert len(trainer.loss_history) == 2 and all(np.isfinite(trainer.loss_history))
    assert trainer.state.samples_seen == 2 * 4 * 2  # steps × batch × accumulation
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    pipe = DiffusionSatPipeline.from_pretrained(final)
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_fine_tunes_a_model_with_v_prediction_on_zero_terminal_snr(shared_data, tmp_path, tiny_model_dir):
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "run", max_steps=2, pretrained=str(tiny_model_dir),
                                               prediction_type="v_prediction", zero_terminal_snr=True))
    final = Trainer(cfg, build_dataset(cfg)).train()
    assert_same_weights(tmp_path / "run" / "base", tiny_model_dir)  # starts from the given model
    scheduler = DiffusionSatPipeline.from_pretrained(final).scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr and scheduler.config.timestep_spacing == "trailing"
    assert float(scheduler.alphas_cumprod[-1]) == 0.0
    scheduler.set_timesteps(25)
    assert int(scheduler.timesteps[0]) == 999  # sampling starts from pure noise


def test_train_only_updates_the_named_parameters_and_freezes_the_rest(shared_data, tmp_path, tiny_model_dir):
    """train_only: [unet.metadata_embedding] re-teaches the metadata MLPs of a model, nothing else moves."""
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "run", max_steps=3, pretrained=str(tiny_model_dir),
                                               train_only=["unet.metadata_embedding"]))
    final = Trainer(cfg, build_dataset(cfg)).train()
    before, after = unet_weights(tiny_model_dir), unet_weights(final)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("metadata_embedding.") for k in moved)
    assert len(moved) == sum(k.startswith("metadata_embedding.") for k in before)  # every MLP tensor trained
    text_before = load_file(tiny_model_dir / "text_encoder" / "model.safetensors")
    text_after = load_file(Path(final) / "text_encoder" / "model.safetensors")
    for k, t in text_before.items():  # new caption words may add embedding rows; the known ones stay
        assert torch.equal(t, text_after[k][: t.shape[0]]), k

    with pytest.raises(ValueError, match=r"train_only: 'unet.no_such_layer' matches no trained parameter"):
        Trainer(load_config(overrides=base_overrides(shared_data, tmp_path / "bad", train_only=["unet.no_such_layer"])),
                build_dataset(cfg)).train()
    with pytest.raises(ValueError, match=r"train_only=.*list of parameter-name prefixes"):
        load_config(overrides={"train_only": [""]})


def test_fine_tuning_errors_are_clear(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match=r"zero_terminal_snr=True: needs prediction_type=v_prediction"):
        load_config(overrides={"zero_terminal_snr": "true"})
    with pytest.raises(ValueError, match=r"pretrained: only for task=generate"):
        load_config(overrides={"pretrained": str(tiny_model_dir), "task": "superres"})
    from diffusionsat.training.components import build_initial_pipeline

    cfg = load_config(overrides={"preset": "small", "pretrained": str(tiny_model_dir)})
    with pytest.raises(ValueError, match=r"generates 16 px but the run trains at 64 px"):
        build_initial_pipeline(cfg, [])
    cfg = load_config(overrides={"preset": "small", "pretrained": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        build_initial_pipeline(cfg, [])
    # a model that already trains at zero terminal SNR cannot be switched to ε-prediction
    from diffusionsat.training.components import training_scheduler

    cfg = load_config(overrides={"prediction_type": "v_prediction", "zero_terminal_snr": "true"})
    zero_snr = training_scheduler(DiffusionSatPipeline.from_pretrained(tiny_model_dir).scheduler, cfg)
    with pytest.raises(ValueError, match="needs prediction_type=v_prediction, not epsilon"):
        training_scheduler(zero_snr, load_config(overrides={"prediction_type": "epsilon"}))


def test_fine_tuning_adds_new_caption_words_and_keeps_the_old_ones(tmp_path, tiny_model_dir):
    import torch

    from diffusionsat.training.components import build_initial_pipeline

    old = DiffusionSatPipeline.from_pretrained(tiny_model_dir)
    cfg = load_config(overrides={"preset": "tiny", "pretrained": str(tiny_model_dir), "output_dir": str(tmp_path)})
    pipe = build_initial_pipeline(cfg, ["a satellite image of a harbor in peru", "a tennis court"])
    old_vocab, new_vocab = old.tokenizer.get_vocab(), pipe.tokenizer.get_vocab()
    assert all(new_vocab[w] == i for w, i in old_vocab.items())  # every known word keeps its id
    assert {"harbor", "tennis", "court"} <= set(new_vocab) - set(old_vocab)
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == len(new_vocab)
    prompt = "a satellite image of a river in peru"
    with torch.no_grad():
        before = old.text_encoder(**old.tokenizer(prompt, return_tensors="pt")).last_hidden_state
        after = pipe.text_encoder(**pipe.tokenizer(prompt, return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(before, after)  # the model is unchanged for prompts it knew
    assert pipe.tokenizer("a harbor").input_ids[2] == new_vocab["harbor"]
    pipe.save_pretrained(tmp_path / "saved")
    assert DiffusionSatPipeline.from_pretrained(tmp_path / "saved").tokenizer.get_vocab() == new_vocab


def test_teacher_blends_its_prediction_into_the_target_of_its_samples_only(shared_data, tmp_path, tiny_model_dir):
    """The student starts as the teacher, so the first step's loss is exact: with weight 1 the target is the
    student's own prediction (loss 0), with 0.5 it is halfway (loss ¼ of the plain run's); samples marked
    ``distill: False`` keep the data's target. Captions are all dropped: new caption words get new embedding
    rows in the student, which its teacher reads as unknown words."""
    from diffusionsat.training.datasets import WithKeys

    def first_loss(name: str, dataset=None, **extra) -> float:
        cfg = load_config(overrides=base_overrides(shared_data, tmp_path / name, max_steps=1, pretrained=str(tiny_model_dir),
                                                   caption_dropout=1.0, metadata_dropout=0.5, **extra))
        trainer = Trainer(cfg, dataset or build_dataset(cfg))
        trainer.train()
        return trainer.loss_history[0]

    plain = first_loss("plain")
    assert plain > 0.01
    assert first_loss("all", teacher_model=str(tiny_model_dir), teacher_weight=1.0) < 1e-10
    assert first_loss("half", teacher_model=str(tiny_model_dir), teacher_weight=0.5) == pytest.approx(plain / 4, rel=1e-4)
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "data"))
    kept_off = WithKeys(build_dataset(cfg), distill=False)
    assert first_loss("off", kept_off, teacher_model=str(tiny_model_dir), teacher_weight=1.0) == pytest.approx(plain, rel=1e-5)


def test_anchor_samples_learn_the_anchor_models_unconditional_prediction(shared_data, tmp_path, tiny_pipeline,
                                                                        tiny_model_dir):
    """With the metadata MLPs' output layers zeroed, the student's caption-less prediction is the same for
    any metadata, so when every located sample is an anchor sample (no caption, lon/lat only) and the
    anchor model is the student itself, the first loss is exactly 0. Samples without lon/lat are never
    anchors (the plain loss), another anchor model gives another target, and the saved UNet records the
    anchor's fields for generation."""
    from diffusionsat.training.datasets import WithKeys

    tiny_pipeline.unet.zero_init_metadata_embedding()
    blind = tmp_path / "blind"
    tiny_pipeline.save_pretrained(blind)

    def first(name: str, dataset=None, **extra) -> Trainer:
        cfg = load_config(overrides=base_overrides(shared_data, tmp_path / name, max_steps=1, pretrained=str(blind),
                                                   caption_dropout=0.0, metadata_dropout=0.0, **extra))
        trainer = Trainer(cfg, dataset or build_dataset(cfg))
        trainer.train()
        return trainer

    plain = first("plain").loss_history[0]
    assert plain > 0.01
    anchored = first("anchored", anchor_model=str(blind), anchor_share=1.0)
    assert anchored.loss_history[0] < 1e-10
    saved = DiffusionSatPipeline.from_pretrained(tmp_path / "anchored" / "model")
    assert saved.guidance_anchor_fields == ("lon", "lat")
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "data"))
    unlocated = WithKeys(build_dataset(cfg), metadata={"gsd": 5.0})
    assert first("unlocated", unlocated, anchor_model=str(blind), anchor_share=1.0).loss_history[0] == pytest.approx(
        plain, rel=1e-5)
    other = first("other", anchor_model=str(tiny_model_dir), anchor_share=1.0).loss_history[0]
    assert other > 1e-6 and other != pytest.approx(plain, rel=1e-3)
    with pytest.raises(ValueError, match=r"anchor_share=0.0: must be in \(0, 1\]"):
        load_config(overrides={"anchor_share": 0.0})
    with pytest.raises(ValueError, match=r"anchor_fields=\['height'\]: must be a non-empty list of metadata fields"):
        load_config(overrides={"anchor_fields": ["height"]})
    with pytest.raises(ValueError, match=r"anchor_model: only for task=generate \(task=superres\)"):
        load_config(overrides={"anchor_model": str(tiny_model_dir), "task": "superres"})
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "vpred", max_steps=1, pretrained=str(blind),
                                               prediction_type="v_prediction", zero_terminal_snr=True,
                                               anchor_model=str(tiny_model_dir)))
    with pytest.raises(ValueError, match=r"anchor_model=.*prediction_type is 'epsilon' but the model trained here"):
        Trainer(cfg, build_dataset(cfg)).train()


def test_teacher_errors_are_clear(shared_data, tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match=r"teacher_weight=1.5: must be in \[0, 1\]"):
        load_config(overrides={"teacher_weight": 1.5})
    with pytest.raises(ValueError, match=r"teacher_model: only for task=generate \(task=superres\)"):
        load_config(overrides={"teacher_model": str(tiny_model_dir), "task": "superres"})
    cfg = load_config(overrides=base_overrides(shared_data, tmp_path / "run", max_steps=1, pretrained=str(tiny_model_dir),
                                               prediction_type="v_prediction", zero_terminal_snr=True,
                                               teacher_model=str(tiny_model_dir)))
    with pytest.raises(ValueError, match=r"teacher_model=.*prediction_type is 'epsilon' but the model trained here "
                                         r"uses 'v_prediction'; a teacher must predict the same target"):
        Trainer(cfg, build_dataset(cfg)).train()
