"""Classifier-feedback guidance of sd-text2img (issue 25; Askari-Hemmat et al., TMLR 2024) on the tiny random-weight
Stable Diffusion pipeline, through diffusers' callback_on_step_end."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from tiny_sd import tiny_clip_tokenizer, tiny_scheduler, tiny_text_encoder, tiny_unet, tiny_vae

from synthaug.data.schema import LabeledImages, LabelSchema
from synthaug.errors import SettingError
from synthaug.generators import create_generator
from synthaug.generators.configs import SDFinetuneConfig, SDText2ImgConfig
from synthaug.generators.feedback import check_pipeline, noise_level, predicted_clean
from synthaug.generators.sd_text2img import SDText2ImgGenerator
from synthaug.plan import make_items, unconditional_items
from synthaug.train.config import ModelConfig
from synthaug.train.loop import predict
from synthaug.train.models import create_classifier, load_classifier, save_classifier

SCHEMA = LabelSchema.single(["cat", "dog", "golden_retriever"])
TINTS = np.array([[0.7, 0.3, 0.3], [0.3, 0.7, 0.3], [0.3, 0.3, 0.7]])  # each class's mean colour


@pytest.fixture(scope="module")
def real() -> LabeledImages:
    """16 noisy 16 x 16 RGB images a class, each class its own tint."""
    labels = np.repeat(np.arange(3), 16)
    noise = 0.15 * np.random.default_rng(0).standard_normal((48, 16, 16, 3))
    pixels = (np.clip(TINTS[labels][:, None, None] + noise, 0, 1) * 255).round().astype(np.uint8)
    return LabeledImages(SCHEMA, labels=labels[:, None], ids=[f"real-{i}" for i in range(48)], pixels=pixels)


def train_classifier(real: LabeledImages, schema: LabelSchema, folder) -> str:
    """A small CNN fitted in 5 full-batch steps to tell the tints apart (train loss about 0.003), saved as
    synthaug's training saves one."""
    torch.manual_seed(0)
    config = ModelConfig(name="small-cnn")
    model = create_classifier(config, schema, in_chans=3)
    x = torch.as_tensor(real.pixels, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1  # the eval normalisation
    y = torch.as_tensor(real.labels[:, 0])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_classifier(model.eval(), config, schema, 3, 16, folder)
    return str(folder)


@pytest.fixture(scope="module")
def classifier_dir(real, tmp_path_factory) -> str:
    return train_classifier(real, SCHEMA, tmp_path_factory.mktemp("classifier") / "model")


def sampler(tiny_sd_dir, feedback=None, real=None, **settings) -> SDText2ImgGenerator:
    g = create_generator("sd-text2img", {"model": str(tiny_sd_dir), "num_inference_steps": 8, "feedback": feedback,
                                         **settings}, SCHEMA)
    if real is not None:
        g.use_real(real)
    return g


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=int) for im in images]


def mean_loss(classifier_dir: str, images, labels: np.ndarray) -> float:
    """The classifier's cross-entropy on the saved (uint8) images, read through `predict` as a training run reads
    them."""
    model, meta = load_classifier(classifier_dir)
    data = LabeledImages(SCHEMA, labels=labels[:, None], ids=[str(i) for i in range(len(labels))],
                         pixels=np.stack([np.asarray(im) for im in images]))
    logits = predict(model, data, meta["image_size"], device=torch.device("cpu"))
    return float(F.cross_entropy(logits, torch.as_tensor(labels)))


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])  # latents x = √ᾱ x0 + √(1−ᾱ) ε, and x = x0 + σ ε
def test_feedback_raises_or_lowers_the_classifiers_loss(tiny_sd_dir, classifier_dir, scheduler):
    items = make_items(SCHEMA, [2, 2, 2], seed=0)
    labels = np.array([it.labels[0] for it in items])
    base = mean_loss(classifier_dir, sampler(tiny_sd_dir, scheduler=scheduler).generate(items), labels)
    scores = {}
    for scale in (0.1, -0.1):
        g = sampler(tiny_sd_dir, {"classifier": classifier_dir, "criterion": "loss", "scale": scale},
                    scheduler=scheduler)
        scores[scale] = mean_loss(classifier_dir, g.generate(items), labels)
        assert g.feedback_seconds > 0
    # measured over plan seeds 0-2 (8 steps, 7 guided): ddim 1.99-2.04 unguided, 4.08-4.19 at +0.1, 0.65-0.71 at
    # -0.1; euler 1.61-1.81 unguided, +0.34 to +0.36 at +0.1, -0.32 to -0.35 at -0.1
    assert scores[-0.1] + 0.15 < base < scores[0.1] - 0.15, (scores, base)


def test_off_settings_give_the_unguided_images_byte_for_byte(tiny_sd_dir, classifier_dir):
    items = make_items(SCHEMA, [1, 1, 1], seed=2) + unconditional_items(1, seed=2)
    plain = pixels(sampler(tiny_sd_dir).generate(items))
    for off in ({"classifier": classifier_dir, "scale": 0.0},
                {"classifier": classifier_dir, "scale": 0.5, "steps": [1.0, 1.0]}):  # the callback runs, guides none
        assert all((a == b).all() for a, b in zip(plain, pixels(sampler(tiny_sd_dir, off).generate(items))))
    guided = pixels(sampler(tiny_sd_dir, {"classifier": classifier_dir, "scale": 0.5}).generate(items))
    assert all((a != b).any() for a, b in zip(plain[:3], guided[:3]))
    assert (plain[3] == guided[3]).all()  # an unlabelled item has no class to take a loss on: it is not pushed


@pytest.mark.parametrize("scheduler", ["default", "euler-ancestral"])  # ancestral: fresh noise every step
def test_feedback_images_do_not_depend_on_the_batch(tiny_sd_dir, classifier_dir, scheduler):
    g = sampler(tiny_sd_dir, {"classifier": classifier_dir, "criterion": "entropy", "scale": 0.3},
                scheduler=scheduler, guidance_scale=3.0)
    items = make_items(SCHEMA, [2, 2, 1], seed=7)
    together = pixels(g.generate(items))
    apart = pixels(g.generate(items[:1]) + g.generate(items[1:4]) + g.generate(items[4:]))
    for a, b in zip(together, apart):  # equal up to float rounding of batched kernels
        diff = np.abs(a - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def test_hardness_uses_the_real_images_it_is_given(tiny_sd_dir, classifier_dir, real):
    items = make_items(SCHEMA, [1, 1, 1], seed=4)
    feedback = {"classifier": classifier_dir, "criterion": "hardness", "scale": 0.3}
    plain = pixels(sampler(tiny_sd_dir).generate(items))
    guided = pixels(sampler(tiny_sd_dir, feedback, real=real).generate(items))
    assert all((a != b).any() for a, b in zip(plain, guided))
    with pytest.raises(SettingError, match=r"hardness.*this sd-text2img generator was given none.*use_real"):
        sampler(tiny_sd_dir, feedback).generate(items)


def test_a_classifier_of_other_classes_is_refused(tiny_sd_dir, real, tmp_path):
    other = LabelSchema.single(["cat", "dog"])
    folder = train_classifier(LabeledImages(other, labels=real.labels % 2, ids=real.ids, pixels=real.pixels),
                              other, tmp_path / "model")
    g = sampler(tiny_sd_dir, {"classifier": folder})
    with pytest.raises(SettingError, match=r"generator\.params\.feedback\.classifier=.*classifies \['cat', 'dog'\].*"
                                           r"this sd-text2img generator draws \['cat', 'dog', 'golden_retriever'\]"):
        g.generate(make_items(SCHEMA, [1, 0, 0], seed=0))


class LegacyPipeline:
    """A pipeline from before diffusers' callback_on_step_end: its only hook is the old per-step ``callback``."""

    def __call__(self, prompt, negative_prompt=None, guidance_scale=7.5, num_inference_steps=50, height=None,
                 width=None, generator=None, output_type="pil", callback=None, callback_steps=1):
        raise AssertionError("feedback must refuse this pipeline before sampling with it")


class LegacyGenerator(SDText2ImgGenerator):
    def _load_pipeline(self):
        return LegacyPipeline()


def test_pipelines_it_cannot_guide_are_refused(tiny_sd_dir, classifier_dir, tmp_path):
    config = SDText2ImgConfig(model=str(tiny_sd_dir), feedback={"classifier": classifier_dir})
    legacy = LegacyGenerator(config, SCHEMA, device=torch.device("cpu"), workdir=tmp_path)
    with pytest.raises(SettingError, match=r"generator\.params\.feedback .*callback_on_step_end.*LegacyPipeline"):
        legacy.check_loadable()
    with pytest.raises(SettingError, match="LegacyPipeline"):
        legacy.generate(make_items(SCHEMA, [1, 0, 0], seed=0))
    # a UNet that also reads the guidance scale (LCM-style time_cond_proj_dim), which the extra pass does not give
    tokenizer = tiny_clip_tokenizer(tmp_path / "tokenizer")
    lcm = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer,
                                  unet=tiny_unet(time_cond_proj_dim=8), scheduler=tiny_scheduler(),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with pytest.raises(SettingError, match=r"feedback .*StableDiffusionPipeline is not one.*time_cond_proj_dim"):
        check_pipeline(lcm)
    # off: nothing is checked, so such pipelines sample as before
    LegacyGenerator(SDText2ImgConfig(model=str(tiny_sd_dir)), SCHEMA, device=torch.device("cpu"),
                    workdir=tmp_path).check_loadable()


@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_the_predicted_clean_latents_are_the_schedulers_own(cls):
    """x̂0 read off a scheduler's latents (its noise level, VP or sigma form) is the one its step computes."""
    scheduler = cls.from_config(tiny_scheduler().config, **({"clip_sample": False} if cls is DDIMScheduler else {}))
    scheduler.set_timesteps(8)
    x0, eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).chunk(2)
    step = 3
    scheduler.step(eps, scheduler.timesteps[step - 1], torch.zeros_like(eps))  # the scheduler now stands at `step`
    alpha_cumprod, to_vp = noise_level(scheduler, step)
    x = (alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * eps) / to_vp  # x_t in the scheduler's form
    ours = predicted_clean(eps, x * to_vp, alpha_cumprod, "epsilon")
    theirs = scheduler.step(eps, scheduler.timesteps[step], x).pred_original_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, x0, rtol=1e-4, atol=1e-4)


def test_feedback_is_a_sampling_setting_recorded_in_every_line(tiny_sd_dir, classifier_dir):
    # off: the sampling part, hence the synthetic set's fingerprint, is what it was before the field existed
    before = {"negative_prompt": None, "guidance_scale": 7.5, "num_inference_steps": 50, "scheduler": "default",
              "height": None, "width": None, "dtype": "auto"}
    assert SDText2ImgConfig(model="m").sampling_part() == {"prompt_template": None, **before}
    assert SDFinetuneConfig(model="m").sampling_part() == before  # its prompt_template trains the model
    for cls in (SDText2ImgConfig, SDFinetuneConfig):
        on = cls(model="m", feedback={"classifier": classifier_dir, "criterion": "entropy"})
        assert on.training_part() == cls(model="m").training_part()  # the model is not retrained
        assert on.sampling_part()["feedback"] == {"classifier": classifier_dir, "criterion": "entropy",
                                                  "scale": 0.1, "steps": [0.0, 1.0], "every": 1}
    g = sampler(tiny_sd_dir, {"classifier": classifier_dir, "criterion": "entropy"})
    assert g.provenance()["feedback"]["criterion"] == "entropy"
    assert g.sampling_params({"seed": 0})["feedback"] is None  # a line written without feedback


def test_an_arm_name_resolves_for_sd_text2img(tiny_sd_dir, tmp_path):
    from synthaug.config import build_config
    from synthaug.runner import open_run

    cfg = build_config({"output_dir": str(tmp_path), "name": "fb", "data": {"source": "digits"},
                        "generator": {"name": "sd-text2img",
                                      "params": {"model": str(tiny_sd_dir), "feedback": {"classifier": "real-ce"}}},
                        "arms": [{"name": "real-ce"}, {"name": "synth", "synthetic": "generated"}]})
    ctx = open_run(cfg)
    assert ctx.generator_config.feedback.classifier == str(ctx.dir / "train" / "real-ce" / "seed0" / "model")
    assert ctx.synthetic_parts["sampling"]["feedback"]["classifier"]["arm"] == "real-ce"
