"""One denoising objective for every trainer: the DDPM (pixels), sd-finetune and mvc (latents) each train their
network toward the target of the scheduler's ``prediction_type``, computed here by hand from the closed forms."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from synthaug.errors import SettingError
from synthaug.generators.configs import DDPMConfig
from synthaug.generators.ddpm import _DDPMBatches
from synthaug.generators.diffusion_training import BatchShare, denoising_target
from synthaug.generators.mvc import instruct_pix2pix_loss
from synthaug.generators.sd_finetune import diffusion_loss

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]


def _expected_target(prediction_type, x0, noise, t, scheduler):
    """ε, x₀ or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho, 2022), from the scheduler's ᾱ."""
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))
    return {"epsilon": noise, "sample": x0,
            "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}[prediction_type]


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2).eval()


def _latent_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    text = torch.randn(3, 5, 16, generator=g)
    return latents, noise, torch.tensor([10, 500, 990]), text


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_shared_target_is_the_closed_form(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    x0, noise, t = _latent_batch()[:3]
    got = denoising_target(prediction_type, x0, noise, t, scheduler)
    torch.testing.assert_close(got, _expected_target(prediction_type, x0, noise, t, scheduler))


def test_an_unknown_prediction_type_is_named():
    with pytest.raises(SettingError, match="'flow'.*epsilon"):
        denoising_target("flow", torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long), None)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_sd_finetune_trains_toward_its_schedulers_target(cond_unet, prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    latents, noise, t, text = _latent_batch()
    unet = _first_half(cond_unet)
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, latents, text, noise, t)
        pred = unet(scheduler.add_noise(latents, noise, t), t, text, return_dict=False)[0]
    expected = F.mse_loss(pred, _expected_target(prediction_type, latents, noise, t, scheduler))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_mvc_trains_toward_its_schedulers_target(cond_unet, prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    latents, noise, t, text = _latent_batch()
    image_latents = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = instruct_pix2pix_loss(cond_unet, scheduler, latents, image_latents, text, noise, t)
        pred = cond_unet(torch.cat([scheduler.add_noise(latents, noise, t), image_latents], 1), t, text).sample
    expected = F.mse_loss(pred, _expected_target(prediction_type, latents, noise, t, scheduler))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_ddpm_trains_toward_its_schedulers_target(prediction_type):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=3).eval()
    cfg = DDPMConfig(prediction_type=prediction_type, batch_size=4, image_size=8, block_out_channels=(8, 16))
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, prediction_type=prediction_type)
    data = torch.rand(6, 1, 8, 8) * 2 - 1
    batches = _DDPMBatches(cfg, scheduler, data, torch.tensor([0, 0, 1, 1, 1, 1]), torch.ones(6), 2)
    with torch.no_grad():
        loss = batches.loss(unet, 0, torch.Generator().manual_seed(3), BatchShare(0, 1))
    # the same draws the loss made, in its order, and the prediction on them
    g = torch.Generator().manual_seed(3)
    idx = torch.multinomial(torch.ones(6), 4, replacement=True, generator=g)
    noise = torch.randn((4, 1, 8, 8), generator=g)
    t = torch.randint(0, cfg.num_train_timesteps, (4,), generator=g)
    drop = torch.rand(4, generator=g) < cfg.label_dropout
    labels = torch.where(drop, torch.full((4,), 2), torch.tensor([0, 0, 1, 1, 1, 1])[idx])
    x0 = data[idx]
    with torch.no_grad():
        pred = unet(scheduler.add_noise(x0, noise, t), t, class_labels=labels).sample
    expected = F.mse_loss(pred, _expected_target(prediction_type, x0, noise, t, scheduler))
    torch.testing.assert_close(loss, expected)


def _first_half(unet):
    """sd-finetune's UNet sees 4 latent channels: the same tiny UNet with a 4-channel input layer."""
    narrow = UNet2DConditionModel.from_config({**unet.config, "in_channels": 4}).eval()
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("conv_in.")}
    narrow.load_state_dict(state, strict=False)
    return narrow
