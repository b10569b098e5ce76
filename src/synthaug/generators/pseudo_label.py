"""``pseudo-label``: unconditional samples labelled by a classifier trained on the real data.

The control arm of the reference study: the same number of synthetic images as the targeted plan, but
drawn without conditioning and labelled by a classifier, so any gain cannot come from the generator
knowing the labels. The base generator (e.g. ``ddpm``, whose null class is its unconditional model) makes
the images; the classifier's arg-max and confidence go into the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from pydantic import Field
from torchvision.transforms import v2

from synthaug.generators.configs import PseudoLabelConfig
from synthaug.generators.base import Generator, create_generator, register_generator
from synthaug.plan import PlanItem
from synthaug.train.augment import eval_transform
from synthaug.train.models import load_classifier




@register_generator("pseudo-label")
class PseudoLabelGenerator(Generator):
    config_class = PseudoLabelConfig
    config: PseudoLabelConfig

    def __init__(self, config, schema, *, device, workdir, seed=0):
        super().__init__(config, schema, device=device, workdir=workdir, seed=seed)
        base_dir = Path(config.base_workdir) if config.base_workdir else self.workdir / "base"
        self.base = create_generator(config.base, config.base_params, schema, device=device, workdir=base_dir, seed=seed)
        self._classifier = None

    def fit(self, real) -> None:
        if not self.base.is_fitted():
            self.base.fit(real)

    def is_fitted(self) -> bool:
        return self.base.is_fitted()

    def generate(self, items: Sequence[PlanItem]) -> list[Image.Image]:
        return self.base.generate([dataclasses.replace(it, labels=None) for it in items])

    @torch.no_grad()
    def annotate(self, items, images) -> list[dict[str, Any]]:
        if self._classifier is None:
            self._classifier = load_classifier(self.config.classifier, self.device)
        model, meta = self._classifier
        tf = v2.Compose([v2.ToImage(), eval_transform(meta["in_chans"], meta["image_size"])])
        mode = "L" if meta["in_chans"] == 1 else "RGB"
        x = torch.stack([tf(im.convert(mode)) for im in images]).to(self.device)
        out = []
        groups = model.split_logits(model(x).float())
        probs = [lg.softmax(1) for lg in groups]
        for i in range(len(images)):
            out.append({"label_ids": [int(p[i].argmax()) for p in probs],
                        "confidence": [round(float(p[i].max()), 4) for p in probs]})
        return out

    def provenance(self) -> dict[str, Any]:
        base = self.base.provenance()
        return {**base, "method": self.name, "base_method": base.get("method"), "classifier": self.config.classifier,
                "guidance_scale": 0.0}
