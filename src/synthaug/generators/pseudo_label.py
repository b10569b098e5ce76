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
from torchvision.transforms import v2

from synthaug.generators.configs import PseudoLabelConfig
from synthaug.errors import SettingError
from synthaug.generators.base import Generated, Generator, create_generator, register_generator
from synthaug.plan import PlanItem
from synthaug.train.augment import eval_transform
from synthaug.train.models import load_classifier




@register_generator("pseudo-label")
class PseudoLabelGenerator(Generator):
    """Unlabelled samples of ``base`` (its ``pseudo_control``), labelled by ``classifier``'s arg-max.

    Each manifest line keeps the base generator's fields (prompt used, guidance, sources, ...), so it says
    exactly how the image was made, plus the classifier's ``label_ids`` and ``confidence``.
    """

    config_class = PseudoLabelConfig
    config: PseudoLabelConfig
    pseudo_control = None  # it is itself the control of another generator

    def __init__(self, config, schema, *, device, workdir, seed=0, progress=True):
        super().__init__(config, schema, device=device, workdir=workdir, seed=seed, progress=progress)
        base_dir = Path(config.base_workdir) if config.base_workdir else self.workdir / "base"
        self.base = create_generator(config.base, config.base_params, schema, device=device, workdir=base_dir,
                                     seed=seed, progress=progress)
        if self.base.pseudo_control is None:
            raise SettingError(f"generator {config.base!r} cannot make class-agnostic samples to pseudo-label "
                               "(its pseudo_control is None); leave the pseudo-labelled control out for it.")
        self._classifier = None

    def fit(self, real) -> None:
        if not self.base.is_fitted():
            self.base.fit(real)

    def is_fitted(self) -> bool:
        return self.base.is_fitted()

    def use_real(self, real) -> None:
        super().use_real(real)
        self.base.use_real(real)

    def _load_classifier(self):
        if self._classifier is None:
            self._classifier = load_classifier(self.config.classifier, self.device)
        return self._classifier

    def check_loadable(self) -> None:
        self.base.check_loadable()
        self._load_classifier()

    @torch.no_grad()
    def sample(self, items: Sequence[PlanItem]) -> list[Generated]:
        made = self.base.sample([dataclasses.replace(it, labels=None) for it in items])
        if not made:
            return []
        model, meta = self._load_classifier()
        normalization = meta.get("normalization")  # a pretrained backbone's mean and std, if it had them
        tf = v2.Compose([v2.ToImage(), eval_transform(meta["in_chans"], meta["image_size"], normalization)])
        mode = "L" if meta["in_chans"] == 1 else "RGB"
        x = torch.stack([tf(g.image.convert(mode)) for g in made]).to(self.device)
        probs = [lg.softmax(1) for lg in model.split_logits(model(x).float())]
        return [Generated(g.image, {**g.meta, "label_ids": [int(p[i].argmax()) for p in probs],
                                    "confidence": [round(float(p[i].max()), 4) for p in probs]})
                for i, g in enumerate(made)]

    def item_from_record(self, record: dict[str, Any]) -> PlanItem:
        """The unlabelled item behind a line (its ``label_ids`` are the classifier's, not the item's)."""
        return dataclasses.replace(self.base.item_from_record({**record, "label_ids": None}), labels=None)

    def sampling_params(self, record: dict[str, Any]) -> dict[str, Any]:
        """``base_params`` with the base generator's sampling settings of the line."""
        return {"base_params": {**self.config.base_params, **self.base.sampling_params(record)}}

    def provenance(self) -> dict[str, Any]:
        base = self.base.provenance()
        return {**base, "method": self.name, "base_method": base.get("method"),
                "classifier": self.config.classifier}
